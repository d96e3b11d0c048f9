"""Registry, resolution order, verification and its cache, and load_split, on the committed subsets; the
registry's checksums and the full splits' counts on the canonical files."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from unittest import mock

import pytest
import torch

import cnnlab.data.sources as sources
from cnnlab.data import get_spec, list_datasets, load_split, locate, read_idx, write_idx
from cnnlab.errors import ConfigError, DataError
from conftest import SUBSET_TEST, SUBSET_TRAIN

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def no_system_copies(monkeypatch):
    """Tests must not depend on (or be fooled by) a system-wide install."""
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    sources.forget_loaded()


def debian_style_copy(src: Path, dest: Path) -> None:
    """Rewrite a canonical .gz the way Debian's build did: FNAME dropped, MTIME changed, same deflate body."""
    data = src.read_bytes()
    body_start = data.index(b"\x00", 10) + 1 if data[3] & 0x08 else 10   # after FNAME, if there is one
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"\x1f\x8b\x08\x00" + struct.pack("<I", 1_600_000_000) + b"\x00\x03" + data[body_start:])


# ---- registry

def test_list_and_specs():
    assert list_datasets() == ["cifar10", "fashion-mnist", "kmnist", "mnist"]
    spec = get_spec("fashion-mnist")
    assert spec.classes == ("t-shirt", "trouser", "pullover", "dress", "coat",
                            "sandal", "shirt", "sneaker", "bag", "ankle boot")
    assert spec.image_shape == (1, 28, 28) and (spec.num_train, spec.num_test) == (60_000, 10_000)
    assert get_spec("mnist").classes == tuple("0123456789")


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ConfigError, match="cifar10, fashion-mnist, kmnist, mnist"):
        get_spec("cifar100")


def test_registry_checksums_match_canonical_files(full_fashion_dir, full_mnist_dir):
    for name, folder in (("fashion-mnist", full_fashion_dir), ("mnist", full_mnist_dir)):
        published = dict(line.split()[::-1] for line in (folder / "md5sums.txt").read_text().splitlines())
        for fspec in get_spec(name).files.values():
            gz = (folder / fspec.gz_name).read_bytes()
            assert hashlib.md5(gz).hexdigest() == fspec.gz_md5 == published[fspec.gz_name], fspec.gz_name
            content = gzip.decompress(gz)
            assert hashlib.sha256(content).hexdigest() == fspec.sha256, fspec.gz_name
            assert len(content) == fspec.size


# ---- resolution, on the committed subsets with the registry describing them


@pytest.fixture
def fashion(fashion_subset, subset_registry):
    """Fashion-MNIST's committed subset, which the registry then describes (verification stays on)."""
    return fashion_subset


@pytest.fixture
def mnist(mnist_subset, subset_registry):
    return mnist_subset


def test_explicit_dir_direct_and_parent_layouts(fashion):
    direct = locate("fashion-mnist", fashion)
    parent = locate("fashion-mnist", fashion.parent)
    assert direct.folder == parent.folder == fashion
    assert direct.how == "data_dir" and direct.verified
    assert set(direct.files) == {(s, p) for s in ("train", "test") for p in ("images", "labels")}


def test_environment_variable_is_used(fashion, mnist, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(fashion.parent))
    assert locate("mnist").folder == mnist
    assert locate("fashion-mnist").how == "CNNLAB_DATA"


def test_explicit_dir_beats_environment(fashion, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert locate("fashion-mnist", fashion).how == "data_dir"


def test_explicit_dir_missing_files_is_an_error_not_a_fallthrough(fashion, tmp_path, isolated_cache):
    debian_style_copy(fashion / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz")
    shutil.copytree(fashion, isolated_cache / "cnnlab" / "fashion-mnist")  # a good cache copy exists
    with pytest.raises(DataError) as info:
        locate("fashion-mnist", tmp_path)
    assert f"no train-images-idx3-ubyte[.gz] in {tmp_path} or {tmp_path / 'fashion-mnist'}" in str(info.value)
    assert "--data-dir" in str(info.value)


def test_explicit_dir_with_wrong_content_names_the_file(fashion, tmp_path, monkeypatch):
    for stem in STEMS:
        shutil.copy(fashion / f"{stem}.gz", tmp_path)
    labels = read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")
    labels[0] = (labels[0] + 1) % 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)  # uncompressed and one label off
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte does not match the registry.*CNNLAB_DATA"):
        locate("fashion-mnist")


def test_uncompressed_files_are_accepted(fashion, tmp_path):
    for stem in STEMS:
        (tmp_path / stem).write_bytes(gzip.decompress((fashion / f"{stem}.gz").read_bytes()))
    location = locate("fashion-mnist", tmp_path)
    assert location.verified and set(location.checks.values()) == {"sha256"}
    images, labels = load_split("fashion-mnist", "test", tmp_path)
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_system_copy_with_debian_gzip_headers_is_verified_by_content(fashion, tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    for stem in STEMS:
        debian_style_copy(fashion / f"{stem}.gz", system / "fashion-mnist" / f"{stem}.gz")
        assert (system / "fashion-mnist" / f"{stem}.gz").read_bytes() != (fashion / f"{stem}.gz").read_bytes()
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (str(tmp_path / "elsewhere"), str(system)))
    location = locate("fashion-mnist", download=False)
    assert location.how == "system" and location.folder == system / "fashion-mnist"
    assert set(location.checks.values()) == {"sha256"}  # md5 of the .gz differs, content does not


def test_corrupt_cache_copy_is_skipped_for_a_system_copy(fashion, tmp_path, isolated_cache, monkeypatch):
    cached = isolated_cache / "cnnlab" / "fashion-mnist"
    shutil.copytree(fashion, cached)
    data = bytearray((cached / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (cached / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(data[:-30]))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (str(fashion.parent),))
    location = locate("fashion-mnist", download=False)
    assert location.how == "system"


def test_cache_copy_is_found(fashion, isolated_cache):
    shutil.copytree(fashion, isolated_cache / "cnnlab" / "fashion-mnist")
    assert locate("fashion-mnist", download=False).how == "cache"


def test_nothing_found_lists_every_place_and_the_fixes(tmp_path, isolated_cache, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
    with pytest.raises(DataError) as info:
        locate("fashion-mnist", download=False)
    message = str(info.value)
    assert str(isolated_cache / "cnnlab") in message and str(tmp_path / "system") in message
    for fix in ("--data-dir", "CNNLAB_DATA", "apt-get install dataset-fashion-mnist"):
        assert fix in message
    assert "\n" not in message


# ---- the verification cache

def test_second_locate_uses_the_verification_cache(fashion, isolated_cache, monkeypatch):
    first = locate("fashion-mnist", fashion)
    assert set(first.checks.values()) == {"md5"}
    stamps = json.loads((isolated_cache / "cnnlab" / "verified.json").read_text())
    assert str((fashion / "train-images-idx3-ubyte.gz").resolve()) in stamps  # keyed by real path

    def no_hashing(*args, **kwargs):
        raise AssertionError("re-hashed a file the cache vouches for")

    monkeypatch.setattr(sources, "_file_md5", no_hashing)
    monkeypatch.setattr(sources, "content_sha256", no_hashing)
    second = locate("fashion-mnist", fashion)  # a new _Stamps reads the file, as a new process would
    assert set(second.checks.values()) == {"cache"}
    images, labels = load_split("fashion-mnist", "test", fashion)
    assert images.shape == (1_000, 1, 28, 28)


def test_a_changed_file_is_checked_again(fashion, tmp_path):
    for stem in STEMS:
        shutil.copy(fashion / f"{stem}.gz", tmp_path)
    assert locate("fashion-mnist", tmp_path).verified
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes())[:-1] + b"\x00"))
    with pytest.raises(DataError, match="does not match the registry"):
        locate("fashion-mnist", tmp_path)


def test_no_verify_trusts_files_but_says_so(fashion, tmp_path):
    for stem in STEMS:
        shutil.copy(fashion / f"{stem}.gz", tmp_path)
    location = locate("fashion-mnist", tmp_path, verify=False)
    assert not location.verified and set(location.checks.values()) == {"skipped"}


def test_no_verify_counts_files_verified_before_and_trusts_the_rest(fashion, tmp_path):
    """A file hashed and found right before counts as verified under --no-verify too (for free); one whose
    recorded hash is another's (the registry changed, or the cache was written for other checksums) is
    trusted, as --no-verify says, not refused."""
    for stem in STEMS:
        shutil.copy(fashion / f"{stem}.gz", tmp_path)
    assert locate("fashion-mnist", tmp_path).verified                 # hashes them, records them
    location = locate("fashion-mnist", tmp_path, verify=False)
    assert location.verified and set(location.checks.values()) == {"cache"}
    spec = get_spec("fashion-mnist")
    key = ("test", "labels")
    altered = dataclasses.replace(spec.files[key], sha256="0" * 64, gz_md5="0" * 32)
    with mock.patch.dict(spec.files, {key: altered}):
        location = locate("fashion-mnist", tmp_path, verify=False)
        assert location.checks[key] == "skipped" and not location.verified
        with pytest.raises(DataError, match="does not match the registry"):
            locate("fashion-mnist", tmp_path)


# ---- load_split

def test_canonical_splits_counts_and_types(full_fashion_dir, full_mnist_dir):
    """The full files load as the registry says: 60,000 and 10,000 examples, the classes' counts."""
    sources.forget_loaded()
    images, labels = load_split("fashion-mnist", "train", full_fashion_dir)
    assert images.dtype == torch.uint8 and images.shape == (60_000, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (60_000,)
    assert torch.bincount(labels).tolist() == [6000] * 10
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert abs(images.double().mean().item() - 72.94) < 0.01  # SOURCE.md's mean pixel
    images, labels = load_split("fashion-mnist", "test", full_fashion_dir)
    assert images.shape == (10_000, 1, 28, 28) and torch.bincount(labels).tolist() == [1000] * 10
    raw = gzip.decompress((full_fashion_dir / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    assert images.numpy().tobytes() == raw
    images, labels = load_split("mnist", "test", full_mnist_dir)
    assert images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_train_split_counts_and_types(fashion_dir):
    sources.forget_loaded()
    images, labels = load_split("fashion-mnist", "train", fashion_dir)
    assert images.dtype == torch.uint8 and images.shape == (SUBSET_TRAIN, 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.shape == (SUBSET_TRAIN,)
    # The first 2,000 labels of the canonical file (counted when the subset was made).
    assert torch.bincount(labels).tolist() == [194, 216, 202, 195, 186, 200, 194, 215, 198, 200]
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    raw = gzip.decompress((fashion_dir / "train-images-idx3-ubyte.gz").read_bytes())[16:]
    assert images.numpy().tobytes() == raw


def test_test_split_and_memoisation(fashion_dir):
    sources.forget_loaded()
    images, labels = load_split("fashion-mnist", "test", fashion_dir)
    assert images.shape == (SUBSET_TEST, 1, 28, 28)
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(labels).tolist() == [107, 105, 111, 93, 115, 87, 97, 95, 95, 95]
    raw = gzip.decompress((fashion_dir / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    assert images.numpy().tobytes() == raw
    again = load_split("fashion-mnist", "test", fashion_dir.parent)
    assert again[0] is images and again[1] is labels


def test_mnist_test_split(mnist_dir):
    images, labels = load_split("mnist", "test", mnist_dir)
    assert images.shape == (SUBSET_TEST, 1, 28, 28)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(labels).tolist() == [85, 126, 116, 107, 110, 87, 87, 99, 89, 94]


def test_unknown_split_is_a_config_error(fashion_dir):
    with pytest.raises(ConfigError, match="train, test"):
        load_split("fashion-mnist", "validation", fashion_dir)


def test_committed_subsets_are_the_first_examples_of_the_canonical_files(fashion_subset, mnist_subset,
                                                                          full_fashion_dir, full_mnist_dir):
    """tests/data holds the first 2,000 training and 1,000 test examples, byte for byte."""
    for name, subset, full in (("fashion-mnist", fashion_subset, full_fashion_dir),
                               ("mnist", mnist_subset, full_mnist_dir)):
        for stem, n in (("train-images-idx3-ubyte", SUBSET_TRAIN), ("train-labels-idx1-ubyte", SUBSET_TRAIN),
                        ("t10k-images-idx3-ubyte", SUBSET_TEST), ("t10k-labels-idx1-ubyte", SUBSET_TEST)):
            part = read_idx(subset / f"{stem}.gz")
            assert part.shape[0] == n
            assert (part == read_idx(full / f"{stem}.gz")[:n]).all()


def test_trusted_files_may_hold_a_subset_verified_ones_may_not(fashion_subset):
    """verify=False (--no-verify) trusts the files, so any number of examples loads; verification refuses
    a subset by its checksum."""
    images, labels = load_split("fashion-mnist", "train", fashion_subset, download=False, verify=False)
    assert images.shape == (2000, 1, 28, 28) and labels.shape == (2000,)
    assert torch.equal(torch.bincount(labels, minlength=10).sum(), torch.tensor(2000))
    test_images, _ = load_split("fashion-mnist", "test", fashion_subset, download=False, verify=False)
    assert test_images.shape == (1000, 1, 28, 28)
    with pytest.raises(DataError, match="does not match the registry.*--no-verify"):
        load_split("fashion-mnist", "train", fashion_subset, download=False)


def test_trusted_files_still_need_the_datasets_image_shape(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", torch.zeros(5, 27, 28, dtype=torch.uint8).numpy())
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(5, dtype=torch.uint8).numpy())
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", torch.zeros(3, 28, 28, dtype=torch.uint8).numpy())
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.zeros(4, dtype=torch.uint8).numpy())
    with pytest.raises(DataError, match=r"shape \(5, 27, 28\), expected uint8 \(5, 28, 28\)"):
        load_split("fashion-mnist", "train", tmp_path, download=False, verify=False)
    with pytest.raises(DataError, match=r"labels of shape \(4,\), expected \(3,\)"):
        load_split("fashion-mnist", "test", tmp_path, download=False, verify=False)


# ---- hostile folders and files

def test_cnnlab_data_naming_a_file_says_it_is_not_a_folder(tmp_path, monkeypatch):
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0\n")
    monkeypatch.setenv("CNNLAB_DATA", str(afile))
    with pytest.raises(DataError) as info:
        locate("fashion-mnist")
    assert str(info.value).startswith(f"CNNLAB_DATA={afile}: {afile} is a file, not a folder; point CNNLAB_DATA=")


def _deny_reading(monkeypatch, denied: Path) -> None:
    """Make ``denied`` unreadable for this process.  ``chmod 000`` does that for an ordinary user, but
    these tests may run as root, whom file modes do not stop: so opening the file (the builtin
    ``open`` the data layer reads through) is also made to fail as the kernel fails it for a user
    without read permission, EACCES.  What is simulated is the kernel's answer, not the check."""
    import builtins
    import errno

    denied.chmod(0)
    real_open = builtins.open

    def open_(file, *args, **kwargs):
        if not isinstance(file, int) and Path(file).resolve() == denied.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)


@pytest.mark.parametrize("verify", [True, False])
def test_an_unreadable_data_file_is_one_line_and_train_leaves_no_run_directory(
        tmp_path, monkeypatch, capsys, fashion_subset, verify):
    from cnnlab.cli.main import main

    data = tmp_path / "fm"
    shutil.copytree(fashion_subset, data)
    denied = data / "train-images-idx3-ubyte.gz"   # the first file checked (the subset fails its checksum)
    _deny_reading(monkeypatch, denied)
    run = tmp_path / "R"
    flags = [] if verify else ["--no-verify"]
    code = main(["train", "--data-dir", str(data), *flags, "--run-dir", str(run), "--epochs", "1",
                 "--train-limit", "256", "--test-limit", "128", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"cannot read {denied}: Permission denied; give this user read access (chmod a+r {denied})" in err
    assert not run.exists()
