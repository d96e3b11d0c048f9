"""The IDX reader and writer, against hand-computed bytes, Python's gzip module and the committed subsets."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cnnlab.cli.main import main
from cnnlab.data import read_idx, write_idx
from cnnlab.errors import DataError

HEADER_2x3_U8 = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3])


def test_header_and_payload_bytes_are_as_the_format_says(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "a.idx", array)
    assert (tmp_path / "a.idx").read_bytes() == HEADER_2x3_U8 + bytes(range(6))


def test_multibyte_types_are_big_endian_on_disk(tmp_path):
    write_idx(tmp_path / "i.idx", np.array([1, -2], dtype=np.int32))
    assert (tmp_path / "i.idx").read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2,
                                                       0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_round_trip_every_type(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 7 - 40).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_gz_suffix_compresses_and_gzip_module_reads_it(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "a.idx.gz", array)
    assert gzip.decompress((tmp_path / "a.idx.gz").read_bytes()) == HEADER_2x3_U8 + bytes(range(6))
    write_idx(tmp_path / "b.idx", array, compress=True)
    assert (tmp_path / "b.idx").read_bytes()[:2] == b"\x1f\x8b"


def test_writing_is_deterministic(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_concatenated_gzip_members_read_as_one_stream(tmp_path):
    content = HEADER_2x3_U8 + bytes(range(6))
    (tmp_path / "m.gz").write_bytes(gzip.compress(content[:5]) + gzip.compress(content[5:]))
    np.testing.assert_array_equal(read_idx(tmp_path / "m.gz"), np.arange(6).reshape(2, 3))


def test_fashion_test_labels(fashion_subset):
    labels = read_idx(fashion_subset / "t10k-labels-idx1-ubyte.gz")
    assert labels.dtype == np.uint8 and labels.shape == (1_000,)
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]   # as in the canonical file
    raw = gzip.decompress((fashion_subset / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert raw[:8] == bytes([0, 0, 0x08, 1, 0, 0, 0x03, 0xE8]) and labels.tobytes() == raw[8:]


def test_fashion_test_images_match_gzip_module(fashion_subset, tmp_path):
    """The committed file, and a copy with the canonical files' gzip header (FNAME and MTIME set)."""
    path = fashion_subset / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    canonical_header = tmp_path / path.name
    with open(canonical_header, "wb") as f, gzip.GzipFile("t10k-images-idx3-ubyte", "wb", fileobj=f,
                                                           mtime=1504176627) as gz:
        gz.write(raw)
    assert canonical_header.read_bytes()[3] & 0x08   # FNAME, as the published files have
    for copy in (path, canonical_header):
        images = read_idx(copy)
        assert images.shape == (1_000, 28, 28)
        assert images.tobytes() == raw[16:]


# ---- damaged files: one DataError that names the file and the problem

def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data, words", [
    ("truncated.idx", HEADER_2x3_U8 + bytes(5), "truncated"),
    ("padded.idx", HEADER_2x3_U8 + bytes(7), "1 bytes after the payload"),
    ("magic.idx", b"\x01\x02" + HEADER_2x3_U8[2:] + bytes(6), "not an IDX file"),
    ("type.idx", bytes([0, 0, 0x07, 2]) + HEADER_2x3_U8[4:] + bytes(6), "unknown IDX type code 0x07"),
    ("short.idx", b"\x00\x00", "too short"),
    ("header.idx", bytes([0, 0, 8, 3, 0, 0, 0, 2]), "truncated inside its header"),
    ("plain.gz", HEADER_2x3_U8 + bytes(6), "not a gzip file"),
    ("truncated.gz", gzip.compress(HEADER_2x3_U8 + bytes(range(6)) * 50)[:-20], "truncated"),
    ("short-payload.gz", gzip.compress(HEADER_2x3_U8 + bytes(3)), "payload has 3 of 6 bytes"),
    ("padded.gz", gzip.compress(HEADER_2x3_U8 + bytes(9)), "3 bytes after the payload"),
    ("trailing.gz", gzip.compress(HEADER_2x3_U8 + bytes(6)) + b"junk", "unexpected bytes after the gzip"),
])
def test_damaged_files_raise_one_line_data_error(tmp_path, name, data, words):
    path = _write(tmp_path, name, data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and words in message
    assert "\n" not in message


def test_corrupt_deflate_data_is_reported(tmp_path):
    good = bytearray(gzip.compress(HEADER_2x3_U8 + bytes(range(256)) * 40))
    good[len(good) // 2] ^= 0xFF
    path = _write(tmp_path, "corrupt.gz", bytes(good))
    with pytest.raises(DataError, match="corrupt.gz"):
        read_idx(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope.idx")


def test_unsupported_dtype_cannot_be_written(tmp_path):
    with pytest.raises(DataError, match="cannot store dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.uint32))
    assert not (tmp_path / "x.idx").exists()


def test_cli_reports_a_truncated_file_in_one_line_with_status_2(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(data_dir / stem, np.zeros(1, dtype=np.uint8))
    status = main(["data", "info", "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


MAX_U32 = (2**32 - 1).to_bytes(4, "big")


@pytest.mark.parametrize("name, header, words", [
    ("labels.idx", bytes([0, 0, 0x08, 1]) + MAX_U32, "is truncated: payload has 100 of 4294967295 bytes"),
    ("floats.idx", bytes([0, 0, 0x0E, 1]) + MAX_U32, "is truncated: payload has 100 of 34359738360 bytes"),
    ("cube.idx", bytes([0, 0, 0x0E, 3]) + MAX_U32 * 3, "is truncated: payload has 100 of "),
    ("labels.gz", bytes([0, 0, 0x0E, 1]) + MAX_U32, "declares shape (4294967295,) (34,359,738,360 bytes of "
                                                    "float64), more than its "),
    ("cube.gz", bytes([0, 0, 0x08, 3]) + MAX_U32 * 3, "compressed bytes can hold; the header is corrupt"),
])
def test_a_header_declaring_more_than_the_file_holds_is_refused_before_allocating(tmp_path, monkeypatch,
                                                                                   name, header, words):
    body = header + bytes(100)
    path = _write(tmp_path, name, gzip.compress(body) if name.endswith(".gz") else body)
    real_empty = np.empty

    def small_empty(shape, *args, **kwargs):
        assert np.prod(shape, dtype=object) < 10**6, f"allocated {shape}"
        return real_empty(shape, *args, **kwargs)

    monkeypatch.setattr(np, "empty", small_empty)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value).startswith(str(path)) and words in str(info.value) and "\n" not in str(info.value)
