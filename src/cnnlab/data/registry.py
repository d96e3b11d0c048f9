"""The datasets cnnlab knows: class names, files, sizes, mirrors and checksums.

Checksums are of two kinds.  ``sha256`` is of the *decompressed* IDX payload and is the one
that decides whether a copy is right: repackaged copies (Debian's ``dataset-fashion-mnist``
rewrites the gzip headers) differ in their .gz bytes but not in their content.  ``gz_md5`` is
the md5 of the canonical .gz file as the dataset's authors publish it; a file with that md5 is
accepted without decompressing it.

The sha256 values were computed from the canonical files in the project's shared data folder
after checking their .gz md5s against the published ones and their uncompressed md5s against
the ones in that folder's SOURCE.md.

KMNIST's files could not be obtained here, so its decompressed content has no sha256 in the registry
(``sha256=None``): a copy is verified only as the canonical ``.gz`` files, by the md5s its authors
publish (as listed in torchvision's ``torchvision/datasets/mnist.py``, class ``KMNIST``); an unpacked or
repackaged copy needs ``--no-verify``.

CIFAR-10 is published as one file, ``cifar-10-python.tar.gz``, holding both splits as python batch files.
It is verified by the tarball's md5, or, unpacked (a ``cifar-10-batches-py/`` folder), by each batch
file's md5: the values published with the dataset, as listed in torchvision's
``torchvision/datasets/cifar.py`` (kept in :mod:`cnnlab.data.cifar`).  The real files could not be
obtained here; the download and the checks were tested on files of the same format served locally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnlab.data import cifar
from cnnlab.errors import ConfigError

SPLITS = ("train", "test")
PARTS = ("images", "labels")


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset."""

    stem: str
    """File name without ``.gz``, e.g. ``train-images-idx3-ubyte``."""
    sha256: str | None
    """sha256 of the decompressed IDX content; None where it is not known (then only ``gz_md5`` verifies)."""
    size: int
    """Bytes of the decompressed IDX content, or of the file itself where no one decompresses it (the
    CIFAR-10 tarball, its batch files): download limits and deadlines scale with it."""
    gz_md5: str
    """md5 of the canonical file as published: the ``.gz`` file, or the file itself where ``gzipped`` is False."""
    gzipped: bool = True
    """Whether the canonical file is gzipped (named ``<stem>.gz``); CIFAR-10's batch files are not."""

    @property
    def gz_name(self) -> str:
        return self.stem + ".gz"

    @property
    def name(self) -> str:
        """The canonical file's name: what a mirror serves and a copy is looked for under first."""
        return self.gz_name if self.gzipped else self.stem

    @property
    def stamp(self) -> str:
        """What the verification cache records for a verified copy: the content's sha256, or the .gz md5."""
        return self.sha256 or f"gz-md5:{self.gz_md5}"


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and where its files come from."""

    name: str
    title: str
    classes: tuple[str, ...]
    num_train: int
    num_test: int
    files: dict[tuple[str, str], FileSpec]
    """(split, part) -> file, for split in :data:`SPLITS` and part in :data:`PARTS` (IDX datasets), or
    :data:`ARCHIVE_KEY` -> the one archive that holds every split: what the mirrors serve."""
    mirrors: tuple[str, ...]
    """Base URLs, tried in order; a file's URL is the base followed by its canonical name."""
    image_shape: tuple[int, int, int] = (1, 28, 28)
    format: str = "idx"
    """How the files are read: ``idx`` (the MNIST format) or ``cifar-python`` (CIFAR-10's python batches)."""
    unpacked: dict[tuple[str, str], FileSpec] = field(default_factory=dict)
    """The archive's content, extracted: key -> file, in the folder :attr:`unpacked_folder`.  A copy
    qualifies as the archive or as these files; only the archive is downloaded."""
    unpacked_folder: str = ""
    """The folder the archive extracts to (``cifar-10-batches-py``)."""
    normalized: bool = False
    """True: batches are normalised per channel by the training split's statistics, as for your own
    data.  The book's grayscale datasets are fed raw [0, 1] pixels, as the book does."""
    homepage: str = ""
    debian_package: str | None = None
    """Debian package that installs the files under ``/usr/share/datasets/<name>/``, if any."""
    license: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def num_examples(self, split: str) -> int:
        check_split(split)
        return self.num_train if split == "train" else self.num_test

    def file(self, split: str, part: str) -> FileSpec:
        check_split(split)
        return self.files[(split, part)]


ARCHIVE_KEY = ("train+test", "archive")
"""The key of a dataset's one archive in :attr:`DatasetSpec.files` (CIFAR-10's tarball)."""


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _files(checksums: dict[str, tuple[str | None, int, str]]) -> dict[tuple[str, str], FileSpec]:
    prefix = {"train": "train", "test": "t10k"}
    rank = {"images": 3, "labels": 1}
    files = {}
    for split in SPLITS:
        for part in PARTS:
            stem = f"{prefix[split]}-{part}-idx{rank[part]}-ubyte"
            sha256, size, gz_md5 = checksums[stem]
            files[(split, part)] = FileSpec(stem, sha256, size, gz_md5)
    return files


FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    # d2l's names (get_fashion_mnist_labels), in label order 0..9.
    classes=("t-shirt", "trouser", "pullover", "dress", "coat",
             "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    num_train=60_000,
    num_test=10_000,
    files=_files({
        "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                    47_040_016, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                                    60_008, "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                                   7_840_016, "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                                   10_008, "bb300cfdad3c16e7a12a480ee83cd310"),
    }),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    debian_package="dataset-fashion-mnist",
    license="MIT (Zalando SE)",
)

MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    classes=tuple(str(d) for d in range(10)),
    num_train=60_000,
    num_test=10_000,
    files=_files({
        "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                                    47_040_016, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                                    60_008, "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                                   7_840_016, "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                                   10_008, "ec29112dd5afa0611ce80d1b7f02629c"),
    }),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="CC BY-SA 3.0 (Yann LeCun and Corinna Cortes)",
)

KMNIST = DatasetSpec(
    name="kmnist",
    title="Kuzushiji-MNIST",
    # The ten hiragana of the dataset's classmap (romanised), in label order 0..9.
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    num_train=60_000,
    num_test=10_000,
    files=_files({
        "train-images-idx3-ubyte": (None, 47_040_016, "bdb82020997e1d708af4cf47b453dcf7"),
        "train-labels-idx1-ubyte": (None, 60_008, "e144d726b3acfaa3e44228e80efcd344"),
        "t10k-images-idx3-ubyte": (None, 7_840_016, "5c965bf0a639b31b8f53240b1b52f4d7"),
        "t10k-labels-idx1-ubyte": (None, 10_008, "7320c461ea6c1c855c0b718fb2a4b134"),
    }),
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    homepage="https://github.com/rois-codh/kmnist",
    license="CC BY-SA 4.0 (ROIS-DS Center for Open Data in the Humanities, after NIJL and others)",
)

CIFAR_TARBALL_SIZE = 170_498_071
"""Bytes of the published ``cifar-10-python.tar.gz``."""
CIFAR_BATCH_SIZE = 31_035_704
"""Bytes of one of its batch files (a pickle of 10,000 images, labels and file names), give or take a few
hundred: only download limits read a size, and the batch files are never downloaded (the tarball is)."""

CIFAR10 = DatasetSpec(
    name="cifar10",
    title="CIFAR-10",
    classes=cifar.CLASSES,
    num_train=50_000,
    num_test=10_000,
    files={ARCHIVE_KEY: FileSpec("cifar-10-python.tar", None, CIFAR_TARBALL_SIZE, cifar.TARBALL_MD5)},
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    image_shape=(3, 32, 32),
    format="cifar-python",
    unpacked={("test" if name == cifar.TEST_BATCH else "train", name):
              FileSpec(name, None, CIFAR_BATCH_SIZE, md5, gzipped=False) for name, md5 in cifar.BATCH_MD5.items()},
    unpacked_folder="cifar-10-batches-py",
    normalized=True,
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    license="none stated; its page asks to cite Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images",
)

_REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (FASHION_MNIST, MNIST, KMNIST, CIFAR10)}


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; :class:`ConfigError` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}") from None
