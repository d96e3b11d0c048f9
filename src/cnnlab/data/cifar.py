"""CIFAR-10's python version, read without unpickling.

The official ``cifar-10-python.tar.gz`` holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta``: pickles of a dict whose ``data`` is a uint8 NumPy array (10000, 3072) (1024 red, then
1024 green, then 1024 blue values of a 32x32 image, row by row) and whose ``labels`` is a list of ints.
Unpickling runs whatever the file names, so these files are never given to :mod:`pickle`: their opcodes
are parsed (:func:`pickletools.genops`) and run on a small stack machine that knows only data opcodes;
the few globals the layout needs (NumPy's ``_reconstruct``, ``ndarray`` and ``dtype``, and
``_codecs.encode`` of Python 3 writers) are recorded as names and never imported or called.  A file of
any other structure is refused.

The md5 of each batch file is checked against the values published with the dataset (as listed in
torchvision's ``torchvision/datasets/cifar.py``); ``verify=False`` trusts the files.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickletools
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
"""md5 of each batch file of the official tarball (the tarball itself: c58f30108f718f92721af3b95e74349a)."""
TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_BYTES = 3 * 32 * 32
BATCH_IMAGES = 10_000
MAX_BATCH_BYTES = 2 * BATCH_IMAGES * IMAGE_BYTES + (1 << 20)
"""Most bytes a batch file may declare: 10,000 images of 3,072 bytes (the official files are 31 MB), twice
over for a Python 3 protocol 2 pickle (its bytes are latin-1 text, two bytes each above 127), plus 1 MiB of
labels and names.  Checked before a file or tar member is read, so a 3 GB member is refused unread."""
NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass
class Call:
    """``func(*args)`` as the pickle asks for it, never made; ``state`` is what BUILD gave it."""

    func: Global
    args: tuple
    state: object = None


class _Mark:
    pass


MARK = _Mark()
TEXT = {"SHORT_BINSTRING", "BINSTRING", "STRING", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
        "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"}
NUMBERS = {"BININT", "BININT1", "BININT2", "INT", "LONG1", "LONG", "BINFLOAT"}


def _after_mark(stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise ValueError("no MARK")


def parse_pickle(data: bytes, name: str):
    """The object a pickle describes, built from data opcodes only (see the module's docstring)."""
    stack: list = []
    memo: dict = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            op = opcode.name
            if op in ("PROTO", "FRAME"):
                continue
            if op == "STOP":
                break
            if op in TEXT:
                stack.append(arg.encode("latin-1") if op in ("SHORT_BINSTRING", "BINSTRING", "STRING")
                             and isinstance(arg, str) else arg)
            elif op in NUMBERS:
                stack.append(arg)
            elif op in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[op])
            elif op == "MARK":
                stack.append(MARK)
            elif op in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({"EMPTY_DICT": {}, "EMPTY_LIST": [], "EMPTY_TUPLE": ()}[op])
            elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(op[-1])
                items = tuple(stack[-n:])
                del stack[-n:]
                stack.append(items)
            elif op == "TUPLE":
                stack.append(tuple(_after_mark(stack)))
            elif op == "LIST":
                stack.append(list(_after_mark(stack)))
            elif op == "DICT":
                items = _after_mark(stack)
                stack.append(dict(zip(items[0::2], items[1::2])))
            elif op == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif op == "APPENDS":
                items = _after_mark(stack)
                stack[-1].extend(items)
            elif op == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif op == "SETITEMS":
                items = _after_mark(stack)
                stack[-1].update(zip(items[0::2], items[1::2]))
            elif op in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif op == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif op in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[arg])
            elif op in ("GLOBAL", "STACK_GLOBAL"):
                if op == "GLOBAL":
                    module, _, attr = arg.partition(" ")
                else:
                    attr, module = stack.pop(), stack.pop()
                if (module, attr) not in NUMPY_GLOBALS:
                    raise DataError(f"{name} refers to {module}.{attr}, which a CIFAR-10 batch does not; "
                                    f"refusing to read it (it is not the dataset's file)")
                stack.append(Global(module, attr))
            elif op == "REDUCE":
                args, func = stack.pop(), stack.pop()
                if not isinstance(func, Global) or not isinstance(args, tuple):
                    raise ValueError("REDUCE of a non-global")
                if (func.module, func.name) == ("_codecs", "encode"):   # bytes as Python 3 protocol 2 writes them
                    text, encoding = args
                    if encoding != "latin1":
                        raise ValueError(f"encoding {encoding}")
                    stack.append(text.encode("latin-1"))
                else:
                    stack.append(Call(func, args))
            elif op == "BUILD":
                state = stack.pop()
                if not isinstance(stack[-1], Call):
                    raise ValueError("BUILD on a plain value")
                stack[-1].state = state
            else:
                raise ValueError(f"opcode {op}")
    except DataError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{name} is not a CIFAR-10 python batch ({type(exc).__name__}: {str(exc)[:60]}); "
                        f"give the files of the official cifar-10-python.tar.gz") from None
    if len(stack) != 1:
        raise DataError(f"{name} is not a CIFAR-10 python batch (a truncated pickle); "
                        f"give the files of the official cifar-10-python.tar.gz")
    return stack[0]


def _array(value, name: str) -> np.ndarray:
    """The uint8 array a ``numpy.core.multiarray._reconstruct`` call with its BUILD state describes."""
    ok = (isinstance(value, Call) and value.func.name == "_reconstruct" and isinstance(value.state, tuple)
          and len(value.state) == 5)
    if ok:
        _, shape, dtype, fortran, raw = value.state
        ok = (isinstance(dtype, Call) and dtype.func.name == "dtype" and dtype.args[:1] in (("u1",), (b"u1",))
              and isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape) and not fortran
              and isinstance(raw, (bytes, str)))
    if not ok:
        raise DataError(f"{name}: its data is not a uint8 NumPy array; give the files of the official "
                        f"cifar-10-python.tar.gz")
    raw = raw.encode("latin-1") if isinstance(raw, str) else raw
    if math.prod(shape) != len(raw):
        raise DataError(f"{name}: its data array says {shape} but holds {len(raw):,d} bytes; the file is damaged")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()   # writable, as tensors need


def _field(batch: dict, key: str):
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    return None


def parse_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) of one batch file's bytes."""
    batch = parse_pickle(data, name)
    if not isinstance(batch, dict):
        raise DataError(f"{name} is not a CIFAR-10 python batch (no dict at its top)")
    values, labels = _field(batch, "data"), _field(batch, "labels")
    if values is None or not isinstance(labels, list):
        raise DataError(f"{name} has no data array and labels list; give the files of the official "
                        f"cifar-10-python.tar.gz")
    images = _array(values, name)
    if images.ndim != 2 or images.shape[1] != 3072 or images.shape[0] != len(labels):
        raise DataError(f"{name}: data of shape {images.shape} with {len(labels)} labels, expected (N, 3072) "
                        f"and N labels")
    if not all(isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DataError(f"{name} holds labels outside 0..9; the file is damaged")
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)


def is_cifar(path: Path) -> bool:
    """A ``cifar-10-batches-py`` folder (or one holding it), or a ``.tar.gz`` / ``.tgz`` file."""
    if path.is_file():
        return path.name.endswith((".tar.gz", ".tgz"))
    return (path / TEST_BATCH).is_file() or (path / "cifar-10-batches-py" / TEST_BATCH).is_file()


def _check_batch_size(name: str, size: int) -> None:
    """Refuse a batch file whose size no CIFAR-10 batch has, before it is read (:data:`MAX_BATCH_BYTES`)."""
    if size > MAX_BATCH_BYTES:
        raise DataError(f"{name} is {size:,d} bytes, more than a CIFAR-10 batch of {BATCH_IMAGES:,d} images can be "
                        f"(at most {MAX_BATCH_BYTES:,d}); it is not the dataset's file: give the official "
                        f"cifar-10-python.tar.gz")


def _read_files(path: Path) -> dict[str, bytes]:
    names = TRAIN_BATCHES + (TEST_BATCH,)
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)}; it needs the six batch files of "
                            f"cifar-10-python.tar.gz")
        for n in names:
            _check_batch_size(str(folder / n), (folder / n).stat().st_size)
        return {n: (folder / n).read_bytes() for n in names}
    try:
        with tarfile.open(path, "r:*") as tar:
            found = {}
            for member in tar:   # one at a time: a member is checked before the archive is read past it
                base = os.path.basename(member.name)
                if member.isreg() and base in names:
                    _check_batch_size(f"{path}: {member.name}", member.size)
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable tar archive ({type(exc).__name__}: {' '.join(str(exc).split())[:60]}); "
                        f"give cifar-10-python.tar.gz") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; give the official cifar-10-python.tar.gz")
    return found


def load_cifar(path: str | os.PathLike, verify: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images (N, 32, 32, 3), labels) of a CIFAR-10 folder or tarball; each file's md5 checked
    against the published one unless ``verify`` is False."""
    path = Path(path)
    files = _read_files(path)
    if verify:
        for name, data in files.items():
            md5 = hashlib.md5(data).hexdigest()
            if md5 != BATCH_MD5[name]:
                raise DataError(f"{path}: {name} is not the official file (md5 {md5[:12]}..., published "
                                f"{BATCH_MD5[name][:12]}...); use the official cifar-10-python.tar.gz, or "
                                f"--no-verify to trust it")
    train = [parse_batch(files[n], f"{path}: {n}") for n in TRAIN_BATCHES]
    test = parse_batch(files[TEST_BATCH], f"{path}: {TEST_BATCH}")
    return {"train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])), "test": test}
