"""Where a dataset's files come from: resolution, verification (with a cache) and download.

Resolution order, the same for the API and the command line:

1. an explicit ``data_dir`` (``--data-dir``);
2. the ``CNNLAB_DATA`` environment variable;
3. the user cache (:func:`cnnlab.portable.user_cache_dir`: ``~/.cache/cnnlab`` on Linux);
4. system copies, ``<dir>/<dataset>`` for each dir in :data:`SYSTEM_DATA_DIRS` (Debian's
   ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/``);
5. a download from the registry's mirrors into the user cache.

A folder qualifies when it holds the dataset's files either directly or in a sub-folder named after
the dataset, and their content matches the registry: the four IDX files (``.gz`` or not), or for
CIFAR-10 ``cifar-10-python.tar.gz`` or the ``cifar-10-batches-py/`` folder it extracts to.  A
folder named explicitly (1 or 2) that does not qualify is an error; the implicit ones (3, 4) are
skipped with the reason noted, and the final error lists every place tried.

Hashing 55 MB (CIFAR-10: 170 MB) on every run would be wasteful, so a successful check is recorded in
``<cache>/verified.json``, keyed by the file's absolute path, size and mtime_ns.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from cnnlab import fileio, portable
from cnnlab.data.cifar import load_cifar
from cnnlab.data.idx import is_gzip, iter_payload, read_idx
from cnnlab.data.registry import ARCHIVE_KEY, PARTS, DatasetSpec, FileSpec, check_split, get_spec
from cnnlab.errors import CnnlabError, DataError

SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)
"""Folders that may hold system-wide copies as ``<dir>/<dataset>/``; tests replace this."""

DATA_ENV = "CNNLAB_DATA"
MIRRORS_ENV = "CNNLAB_MIRRORS"
DOWNLOAD_TIMEOUT_S = 30.0
"""Most seconds one read from a mirror may wait for data."""
DOWNLOAD_MIN_RATE = 50_000
"""Slowest average download, bytes per second of the file's decompressed size, before a file's
deadline (:func:`download_deadline_s`) gives up on a mirror that trickles."""
URL_SCHEMES = ("http", "https", "ftp", "file")
STAMP_FILE = "verified.json"

FileKey = tuple[str, str]  # (split, part)


def cache_dir() -> Path:
    """The user cache (:func:`cnnlab.portable.user_cache_dir`), where datasets are found and downloaded."""
    return portable.user_cache_dir()


@dataclass(frozen=True)
class Location:
    """A folder holding a complete copy of a dataset, and how it was found."""

    dataset: str
    folder: Path
    how: str
    """``data_dir``, ``CNNLAB_DATA``, ``cache``, ``system`` or ``download``."""
    verified: bool
    """True when every file's content matched the registry (now, or per the verification cache)."""
    files: dict[FileKey, Path] = field(default_factory=dict)
    checks: dict[FileKey, str] = field(default_factory=dict)
    """How each file was verified: ``cache`` (earlier check), ``md5`` (the canonical file), ``sha256``
    (decompressed and hashed now), ``download`` (fetched and checked now) or ``skipped``
    (``verify=False``)."""


# ---------------------------------------------------------------- verification and its cache


class _Stamps:
    """The verification cache: absolute path -> size, mtime_ns and sha256 of the content."""

    def __init__(self) -> None:
        self.path = cache_dir() / STAMP_FILE
        self.entries: dict[str, dict] = {}
        self.dirty = False
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.entries = loaded

    def known_sha256(self, path: Path) -> str | None:
        entry = self.entries.get(str(path.resolve()))
        if not isinstance(entry, dict):
            return None
        st = path.stat()
        if entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry.get("sha256")
        return None

    def record(self, path: Path, sha256: str) -> None:
        st = path.stat()
        self.entries[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        self.dirty = True

    def save(self) -> None:
        """Write the cache if it changed; a cache that cannot be written only costs a re-hash later."""
        if not self.dirty:
            return
        live = {p: e for p, e in self.entries.items() if os.path.exists(p)}
        with contextlib.suppress(CnnlabError):
            fileio.write_json(self.path, live)
        self.dirty = False


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: str | os.PathLike) -> str:
    """sha256 of the decompressed content of ``path`` (gzip or plain)."""
    digest = hashlib.sha256()
    for chunk in iter_payload(path):
        digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, expected: FileSpec, stamps: _Stamps, known_md5: str | None = None) -> str:
    """How ``path`` was found to match ``expected`` (see :attr:`Location.checks`); DataError if not.

    ``known_md5`` is the file's md5 when the caller computed it already (while downloading).
    """
    known = stamps.known_sha256(path)
    if known is not None:
        if known == expected.stamp:
            return "cache"
        if expected.sha256 is not None:
            raise _mismatch(path, expected, known)
    if (is_gzip(path) or not expected.gzipped) and (known_md5 or _file_md5(path)) == expected.gz_md5:
        stamps.record(path, expected.stamp)
        return "md5"
    if expected.sha256 is None:
        unknown = ", and no checksum of the decompressed content is known" if expected.gzipped else ""
        raise DataError(f"{path} is not the canonical {expected.name} (its md5 differs from the published "
                        f"{expected.gz_md5}{unknown}); use the official {expected.name}, or --no-verify to "
                        f"trust this one")
    actual = content_sha256(path)
    if actual != expected.sha256:
        raise _mismatch(path, expected, actual)
    stamps.record(path, actual)
    return "sha256"


def _unreadable(path: Path, exc: OSError) -> DataError:
    if isinstance(exc, PermissionError):
        fix = f"give this user read access (chmod a+r {path}) or point --data-dir at a readable copy"
    else:
        fix = "check the disk, or point --data-dir at another copy"
    return DataError(f"cannot read {path}: {exc.strerror or exc}; {fix}")


def _mismatch(path: Path, expected: FileSpec, actual: str) -> DataError:
    return DataError(f"{path} does not match the registry: sha256 of its decompressed content is "
                     f"{actual[:12]}..., expected {expected.sha256[:12]}... ({expected.stem}; --no-verify trusts "
                     f"the files as they are)")


# ---------------------------------------------------------------- finding copies


def _find_file(folder: Path, fspec: FileSpec) -> Path | None:
    """``folder/<canonical name>`` (``<stem>.gz``) or else ``folder/<stem>``, whichever exists first."""
    for name in dict.fromkeys((fspec.name, fspec.stem)):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_files(folder: Path, specs: dict[FileKey, FileSpec]) -> tuple[dict[FileKey, Path], list[str]]:
    """The files of ``specs`` in ``folder`` and the stems of those missing."""
    found, missing = {}, []
    for key, fspec in specs.items():
        path = _find_file(folder, fspec)
        if path is None:
            missing.append(fspec.stem)
        else:
            found[key] = path
    return found, missing


def _layouts(spec: DatasetSpec, folder: Path) -> list[tuple[Path, dict[FileKey, FileSpec]]]:
    """Where in ``folder`` a complete copy may lie: the files as published (the IDX files, or an
    archive), else the archive's extracted content, in the folder it extracts to or in ``folder``
    itself (``--data-dir`` naming ``cifar-10-batches-py``)."""
    layouts = [(folder, spec.files)]
    if spec.unpacked:
        layouts += [(folder / spec.unpacked_folder, spec.unpacked), (folder, spec.unpacked)]
    return layouts


def _file_spec(spec: DatasetSpec, key: FileKey) -> FileSpec:
    """The registry's entry for a file of a located copy: published, or extracted from the archive."""
    return spec.files[key] if key in spec.files else spec.unpacked[key]


def _holding(spec: DatasetSpec) -> str:
    """What a folder must hold, for messages."""
    if not spec.unpacked:
        return f"the four {spec.name} IDX files"
    return f"{spec.files[ARCHIVE_KEY].name} (or the {spec.unpacked_folder}/ folder it extracts to)"


def _complete_folder(base: Path, spec: DatasetSpec) -> tuple[Path, dict[FileKey, Path]] | str:
    """The first of ``base`` and ``base/<name>`` that holds a complete copy, or why neither does."""
    best_missing: list[str] | None = None   # of the published files
    partial: tuple[Path, list[str]] | None = None   # an extracted folder with some of its files
    for candidate in (base, base / spec.name):
        for folder, specs in _layouts(spec, candidate):
            found, missing = _find_files(folder, specs)
            if not missing:
                return folder, found
            if specs is spec.files and (best_missing is None or len(missing) < len(best_missing)):
                best_missing = missing
            elif specs is spec.unpacked and found and (partial is None or len(missing) < len(partial[1])):
                partial = folder, missing
    if base.exists() and not base.is_dir():
        return f"{base} is a file, not a folder"
    if not base.is_dir():
        return f"{base} does not exist"
    if not spec.unpacked:
        return f"no {best_missing[0]}[.gz] in {base} or {base / spec.name}"
    lacks = f" ({partial[0]} lacks {', '.join(partial[1])})" if partial else ""
    return (f"no {spec.files[ARCHIVE_KEY].name} or {spec.unpacked_folder}/ in {base} or "
            f"{base / spec.name}{lacks}")


def _verify_folder(spec: DatasetSpec, folder: Path, files: dict[FileKey, Path], how: str,
                   stamps: _Stamps, verify: bool) -> Location:
    checks = {}
    for key, path in files.items():
        try:
            with open(path, "rb"):   # every file is read later, checked or not: refuse one that cannot be
                pass
            expected = _file_spec(spec, key)
            if verify:
                checks[key] = _check(path, expected, stamps)
            else:   # trusted; one hashed before and found right still counts as verified, for free
                checks[key] = "cache" if stamps.known_sha256(path) == expected.stamp else "skipped"
        except OSError as exc:
            raise _unreadable(path, exc) from exc
    stamps.save()
    return Location(spec.name, folder, how, all(c != "skipped" for c in checks.values()), files, checks)


def _explicit(spec: DatasetSpec, base: Path, how: str, flag: str, stamps: _Stamps, verify: bool) -> Location:
    fix = (f"point {flag} at a folder holding {_holding(spec)} (or a parent with a "
           f"{spec.name}/ sub-folder), or unset it to use the cache or a download")
    found = _complete_folder(base, spec)
    if isinstance(found, str):
        raise DataError(f"{flag}: {found}; {fix}")
    folder, files = found
    try:
        return _verify_folder(spec, folder, files, how, stamps, verify)
    except DataError as exc:
        stamps.save()
        raise DataError(f"{flag}: {exc}; {fix}") from exc


def _mirrors(spec: DatasetSpec, mirrors) -> list[str]:
    """Mirror base URLs: the argument, else ``$CNNLAB_MIRRORS`` (comma or space separated,
    ``{name}`` replaced by the dataset's name), else the registry's."""
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV, "").replace(",", " ").split()
        mirrors = env or spec.mirrors
    return [m.replace("{name}", spec.name) for m in mirrors]


def locate(name: str, data_dir: str | os.PathLike | None = None, download: bool = True, *,
           verify: bool = True, mirrors=None, progress: bool = True) -> Location:
    """Find (or download) a verified copy of dataset ``name``; see the module's docstring.

    ``verify=False`` trusts found files without hashing (files checked before still count as
    verified).  ``mirrors`` overrides the registry's download mirrors.
    """
    spec = get_spec(name)
    stamps = _Stamps()
    if data_dir is not None:
        return _explicit(spec, Path(data_dir).expanduser(), "data_dir", f"--data-dir {data_dir}", stamps, verify)
    if os.environ.get(DATA_ENV):
        env_dir = os.environ[DATA_ENV]
        return _explicit(spec, Path(env_dir).expanduser(), DATA_ENV, f"{DATA_ENV}={env_dir}", stamps, verify)
    tried = []
    implicit = [("cache", cache_dir())] + [("system", Path(d)) for d in SYSTEM_DATA_DIRS]
    for how, base in implicit:
        found = _complete_folder(base, spec)
        if isinstance(found, str):
            tried.append(found)
            continue
        folder, files = found
        try:
            return _verify_folder(spec, folder, files, how, stamps, verify)
        except DataError as exc:
            stamps.save()
            tried.append(str(exc))
    if download:
        try:
            return download_dataset(name, mirrors=mirrors, progress=progress)
        except DataError as exc:
            tried.append(str(exc))
    else:
        tried.append("no download (download=False; `cnnlab data info --download` allows it)")
    fixes = ["pass --data-dir DIR (data_dir=) holding the files", f"set {DATA_ENV}=DIR",
             f"run `cnnlab data download --dataset {name}`"]
    if spec.debian_package:
        fixes.append(f"`sudo apt-get install {spec.debian_package}`")
    raise DataError(f"{name} not found; tried: {'; '.join(tried)}; fix: {', or '.join(fixes)}")


# ---------------------------------------------------------------- download


def download_limit(fspec: FileSpec) -> int:
    """Most bytes a mirror may send for ``fspec``: its content is ``fspec.size`` bytes, plain or
    gzipped (gzip never adds more than a few bytes per 64 KiB), so twice that plus 1 MiB is generous;
    a body beyond it is something else and would otherwise fill the disk."""
    return 2 * fspec.size + (1 << 20)


def download_deadline_s(fspec: FileSpec) -> float:
    """Most seconds one file's download may take: a minute plus its size at :data:`DOWNLOAD_MIN_RATE`
    (16 minutes for the 47 MB training images), so a mirror that trickles a byte a second fails."""
    return 2 * DOWNLOAD_TIMEOUT_S + fspec.size / DOWNLOAD_MIN_RATE


def _one_line(reason) -> str:
    """A reason from urllib as one line (the redirect-loop message has three)."""
    return " ".join(str(getattr(reason, "strerror", None) or reason).split())


def _fetch(url: str, folder: Path, fspec: FileSpec, stamps: _Stamps, progress: bool) -> Path:
    """Download ``url`` into ``folder``, verify it, and only then rename it into place.

    The body streams into a temporary file next to its destination; any failure (network,
    short, endless or trickling body, checksum) removes that file, so nothing half-written is
    left behind.  (``fileio.atomic_open`` commits on a clean exit; here the content must be
    checked before the rename, so the same temp-then-rename is spelled out.)
    """
    fileio.ensure_dir(folder)
    try:
        fd, tmp_name = portable.new_file(folder, prefix=f".{fspec.gz_name}.", suffix=".part")
    except OSError as exc:  # not a DataError: no other mirror can help
        raise CnnlabError(f"cannot download into {folder}: {exc.strerror or exc}; "
                          f"choose a writable folder (--dest, or $XDG_CACHE_HOME for the cache) "
                          f"or fix its permissions") from exc
    tmp = Path(tmp_name)
    limit, deadline_s = download_limit(fspec), download_deadline_s(fspec)
    broken = f"more than {fspec.gz_name} can be ({limit:,d} bytes); the mirror is broken: use another --mirror"
    try:
        md5 = hashlib.md5()
        received = 0
        with os.fdopen(fd, "wb") as out:
            started = time.monotonic()
            try:
                response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
            except urllib.error.HTTPError as exc:
                raise DataError(f"{url}: HTTP {exc.code} {_one_line(exc.reason)}") from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise DataError(f"{url}: {_one_line(getattr(exc, 'reason', exc))}") from exc
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and total > limit:
                    raise DataError(f"{url}: announces {total:,d} bytes, {broken}")
                read = getattr(response, "read1", response.read)  # read1: return what arrived, do not wait for 64 KiB
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=fspec.gz_name,
                          disable=not progress, leave=False) as bar:
                    try:
                        while block := read(1 << 16):
                            received += len(block)
                            if received > limit:
                                raise DataError(f"{url}: sent {broken}")
                            out.write(block)
                            md5.update(block)
                            bar.update(len(block))
                            if time.monotonic() - started > deadline_s:
                                raise DataError(f"{url}: too slow, {received:,d} bytes in {deadline_s:.0f} s "
                                                f"(the limit for {fspec.gz_name}); use another --mirror or retry later")
                    except (OSError, http.client.HTTPException) as exc:
                        raise DataError(f"{url}: connection failed after {received} bytes "
                                        f"({_one_line(exc) or type(exc).__name__})") from exc
            if total is not None and received != total:
                raise DataError(f"{url}: truncated body, received {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        try:
            _check(tmp, fspec, stamps, known_md5=md5.hexdigest())
        except DataError as exc:
            raise DataError(f"{url}: corrupt download: "
                            f"{str(exc).replace(str(tmp), 'the body')}") from exc
        final = folder / (fspec.gz_name if is_gzip(tmp) else fspec.stem)
        try:
            portable.replace(tmp, final)
        except OSError as exc:
            raise DataError(f"cannot write {final}: {exc.strerror or exc}; check free space and permissions") from exc
        stamps.record(final, fspec.stamp)
        for stale in (folder / fspec.gz_name, folder / fspec.stem):
            if stale != final and stale.exists():
                stale.unlink()
        return final
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _remove_abandoned_parts(folder: Path, spec: DatasetSpec) -> None:
    """Delete ``.part`` files of downloads that cannot still be running (older than their deadline):
    what a killed process (SIGKILL, a crash, a power cut) left behind."""
    for fspec in spec.files.values():
        for part in folder.glob(f".{fspec.gz_name}.*.part"):
            with contextlib.suppress(OSError):
                if time.time() - part.stat().st_mtime > download_deadline_s(fspec) + 2 * DOWNLOAD_TIMEOUT_S:
                    part.unlink()


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """While downloading, SIGTERM (``kill``, a job scheduler) unwinds like Ctrl-C, so the partial
    file is removed; the exit status is still 128 + 15.  Only where Python can handle signals (the
    main thread) and no one else installed a SIGTERM handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _check_mirrors(urls: list[str]) -> None:
    for url in urls:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in URL_SCHEMES or (scheme != "file" and not urllib.parse.urlsplit(url).netloc):
            raise DataError(f"mirror {url!r} is not a URL; give --mirror (or ${MIRRORS_ENV}) a base URL "
                            f"such as https://host/path/ ({', '.join(URL_SCHEMES)})")


def download_dataset(name: str, dest: str | os.PathLike | None = None, *, mirrors=None,
                     progress: bool = True) -> Location:
    """Make ``dest`` (default ``<cache>/<name>``) hold a verified copy of every file of ``name``.

    Files already there and verified are kept; the others are fetched mirror after mirror.
    When a file cannot be fetched from any mirror, :class:`DataError` lists every attempt.
    """
    spec = get_spec(name)
    folder = Path(dest).expanduser() if dest is not None else cache_dir() / name
    stamps = _Stamps()
    files: dict[FileKey, Path] = {}
    checks: dict[FileKey, str] = {}
    urls = _mirrors(spec, mirrors)
    if not urls:
        raise DataError(f"no download mirrors for {name}; set {MIRRORS_ENV} or pass --mirror URL")
    _check_mirrors(urls)
    if folder.is_dir():
        _remove_abandoned_parts(folder, spec)
    try:
        with _terminate_unwinds():
            _download_files(spec, folder, urls, stamps, files, checks, progress)
    finally:
        stamps.save()
    return Location(name, folder, "download", True, files, checks)


def _download_files(spec: DatasetSpec, folder: Path, urls: list[str], stamps: _Stamps,
                    files: dict[FileKey, Path], checks: dict[FileKey, str], progress: bool) -> None:
    """Fill ``files`` and ``checks`` with each file of ``spec`` in ``folder``, fetching those missing."""
    for key, fspec in spec.files.items():
        existing = _find_file(folder, fspec)
        if existing is not None:
            try:
                checks[key] = _check(existing, fspec, stamps)
                files[key] = existing
                continue
            except DataError:
                pass  # a wrong or damaged copy: fetch a good one over it
        failures = []
        for base in urls:
            url = base.rstrip("/") + "/" + fspec.name
            try:
                files[key] = _fetch(url, folder, fspec, stamps, progress)
                checks[key] = "download"
                break
            except DataError as exc:
                failures.append(str(exc))
        else:
            raise DataError(f"download of {fspec.gz_name} failed from every mirror: {'; '.join(failures)}")


# ---------------------------------------------------------------- loading


_LOADED: dict[tuple, tuple] = {}


def forget_loaded() -> None:
    """Drop the splits :func:`load_split` keeps in memory (tests, or to free memory)."""
    _LOADED.clear()


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = True, *,
               verify: bool = True):
    """``(images, labels)`` of one split: uint8 (N, C, H, W) (the registry's ``image_shape``, (1, 28, 28)
    for the IDX datasets) and int64 (N,) CPU tensors.

    An IDX split's images tensor is a view of the array parsed from the file (no copy); the labels are
    widened to int64 once.  Splits are kept in memory per file identity, so loading the same
    split again in one process costs a ``stat``; the returned tensors are shared between calls,
    so clone them before changing them in place.
    """
    check_split(split)
    return read_split(locate(name, data_dir, download, verify=verify), split)


def read_split(location: Location, split: str):
    """``(images, labels)`` of one split of a located dataset (see :func:`load_split`)."""
    name = location.dataset
    spec = get_spec(name)
    if spec.format == "cifar-python":
        return _cifar_splits(spec, location)[split]
    paths = [location.files[(split, part)] for part in PARTS]
    key = (name, split) + tuple(_identity(p) for p in paths)
    if key in _LOADED:
        return _LOADED[key]
    images, labels = (read_idx(p) for p in paths)
    # Verified files hold exactly the registry's examples.  Trusted ones (verify=False) may hold any
    # number of them in the dataset's format: a subset, or the same images in another order.
    verified = all(location.checks.get((split, part)) != "skipped" for part in PARTS)
    expected_n = spec.num_examples(split) if verified else max(len(images), 1)
    if images.dtype != np.uint8 or images.shape != (expected_n,) + spec.image_shape[1:]:
        raise DataError(f"{paths[0]} holds {images.dtype} images of shape {images.shape}, expected uint8 "
                        f"({expected_n}, {spec.image_shape[1]}, {spec.image_shape[2]}); replace the file")
    if labels.shape != (expected_n,):
        raise DataError(f"{paths[1]} holds labels of shape {labels.shape}, expected ({expected_n},); "
                        f"replace the file")
    _check_labels(paths[1], labels, spec.num_classes)
    result = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64))
    _LOADED[key] = result
    return result


def _identity(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _cifar_splits(spec: DatasetSpec, location: Location) -> dict[str, tuple]:
    """Both splits of a located CIFAR-10 copy, the tarball or its batch files, as :func:`load_split`
    returns them.  One read gives both (the tarball holds them together), so they are kept together."""
    key = (spec.name, "train+test") + tuple(_identity(p) for p in sorted(location.files.values()))
    if key in _LOADED:
        return _LOADED[key]
    source = location.files.get(ARCHIVE_KEY, location.folder)
    # locate checked the md5s (or, with --no-verify, trusts the files): they are not hashed again here.
    splits = load_cifar(source, verify=False)
    verified = all(check != "skipped" for check in location.checks.values())
    result = {}
    for split, (images, labels) in splits.items():
        if verified and len(labels) != spec.num_examples(split):
            raise DataError(f"{source} holds {len(labels):,d} {split} images, expected {spec.num_examples(split):,d}; "
                            f"replace it with the official {spec.files[ARCHIVE_KEY].name}")
        result[split] = (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                         torch.from_numpy(labels).to(torch.int64))
    _LOADED[key] = result
    return result


def class_counts(location: Location, split: str) -> np.ndarray:
    """Examples per class in ``split`` of a located dataset (for IDX, reads only the small label file)."""
    spec = get_spec(location.dataset)
    if spec.format == "cifar-python":
        return np.bincount(_cifar_splits(spec, location)[split][1].numpy(), minlength=spec.num_classes)
    path = location.files[(split, "labels")]
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"{path} holds labels of shape {labels.shape}, expected one dimension; replace the file")
    _check_labels(path, labels, spec.num_classes)
    return np.bincount(labels, minlength=spec.num_classes)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """DataError naming ``path`` unless every label is an integer class number in 0..num_classes-1."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path} holds {labels.dtype} labels, expected integer class numbers; replace the file")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        shown = ", ".join(str(v) for v in np.unique(bad)[:5])
        raise DataError(f"{path} holds {bad.size:,d} label(s) outside the classes 0..{num_classes - 1} "
                        f"(values {shown}{', ...' if np.unique(bad).size > 5 else ''}); the file is damaged: "
                        f"replace it")
