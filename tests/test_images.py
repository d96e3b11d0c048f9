"""cnnlab.images: every mode and bit depth Pillow opens becomes the 8-bit pixels computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import DataError
from cnnlab.images import is_colour, open_image, read_image, to_8bit


def saved(tmp_path, img: Image.Image, name: str, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 128]], dtype=np.uint16)
    path = saved(tmp_path, Image.fromarray(values), "deep.png")
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
        assert (pixels(raw.convert("L")) == [[0, 255, 255, 255, 128]]).all()   # Pillow clips
    img = read_image(path)
    assert img.mode == "L"
    assert (pixels(img) == [[0, 1, 128, 255, 0]]).all()     # round(v / 257)


def test_the_same_picture_in_8_and_16_bits_gives_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, size=(9, 7), dtype=np.uint8)
    sixteen = eight.astype(np.uint16) * 257
    a = read_image(saved(tmp_path, Image.fromarray(eight), "a.png"))
    b = read_image(saved(tmp_path, Image.fromarray(sixteen), "b.png"))
    assert (pixels(a) == pixels(b)).all()


def test_32_bit_integer_images():
    in_16_bit_range = Image.fromarray(np.array([[0, 514, 65535]], dtype=np.int32))
    assert in_16_bit_range.mode == "I"
    assert (pixels(to_8bit(in_16_bit_range)) == [[0, 2, 255]]).all()
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert (pixels(to_8bit(wide)) == [[0, 128, 255]]).all()    # min..max: 127.5 rounds to even 128


def test_float_images():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.2]], dtype=np.float32))
    assert unit.mode == "F"
    assert (pixels(to_8bit(unit)) == [[0, 128, 255, 51]]).all()   # round(255 v); 127.5 -> 128
    wide = Image.fromarray(np.array([[10.0, 20.0, 30.0]], dtype=np.float32))
    assert (pixels(to_8bit(wide)) == [[0, 128, 255]]).all()
    flat = Image.fromarray(np.full((2, 2), 7.0, dtype=np.float32))
    assert (pixels(to_8bit(flat)) == 0).all()


def test_bilevel_and_palette():
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert bilevel.mode == "1"
    assert (pixels(to_8bit(bilevel)) == [[255, 0]]).all()
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert is_colour(palette)
    rgb = to_8bit(palette)
    assert rgb.mode == "RGB" and (pixels(rgb) == [[[10, 20, 30], [200, 100, 50]]]).all()
    gray_palette = Image.new("P", (1, 1))
    gray_palette.putpalette([77, 77, 77] + [0] * 765)
    assert not is_colour(gray_palette) and (pixels(to_8bit(gray_palette)) == [[77]]).all()


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = Image.fromarray(np.array([[[255, 0, 0, 255], [0, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8), "RGBA")
    out = pixels(to_8bit(rgba))
    assert (out[0, 0] == [255, 0, 0]).all() and (out[0, 1] == [255, 255, 255]).all()
    # Half-transparent blue over white: 255 * (1 - 128/255) per channel for red and green, 255 for blue.
    assert abs(out[0, 2, 0] - 127) <= 1 and abs(out[0, 2, 1] - 127) <= 1 and out[0, 2, 2] == 255
    la = Image.fromarray(np.array([[[40, 255], [40, 0]]], dtype=np.uint8), "LA")
    assert (pixels(to_8bit(la)) == [[40, 255]]).all()
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
    palette.putpixel((1, 0), 1)
    path = saved(tmp_path, palette, "t.png", transparency=0)
    img = read_image(path)
    assert img.mode == "L" and (pixels(img) == [[255, 90]]).all()


def test_colour_to_gray_is_pillows_luma_and_gray_to_colour_repeats():
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], dtype=np.uint8))
    gray = pixels(to_8bit(rgb, channels=1))
    # L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded
    assert (gray == [[76, 150, 29, round(10 * .299 + 200 * .587 + 30 * .114)]]).all()
    three = pixels(to_8bit(Image.fromarray(np.array([[5, 250]], dtype=np.uint8)), channels=3))
    assert (three == [[[5, 5, 5], [250, 250, 250]]]).all()


def test_cmyk_and_ycbcr_become_rgb():
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))     # no cyan, full magenta and yellow: red
    assert (pixels(to_8bit(cmyk)) == [[[255, 0, 0]]]).all()
    ycc = Image.new("RGB", (1, 1), (30, 60, 90)).convert("YCbCr")
    assert to_8bit(ycc).mode == "RGB" and is_colour(ycc)


def test_gif_reads_its_first_frame_and_exif_orientation_is_applied(tmp_path):
    frames = [Image.new("L", (2, 2), v) for v in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert pixels(read_image(path, 1))[0, 0] == 10
    wide = Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3))
    exif = Image.Exif()
    exif[0x0112] = 6    # rotate 90 degrees clockwise to display
    rotated = read_image(saved(tmp_path, wide, "r.png", exif=exif))
    assert rotated.size == (2, 3)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png is not an image Pillow can read"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    good = saved(tmp_path, Image.new("L", (50, 50)), "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="truncated.png is not an image"):
        read_image(truncated)
    with pytest.raises(DataError, match=r"too large to read safely \(2,500 pixels, more than 100\)"):
        open_image(good, max_pixels=100)
    with pytest.raises(DataError, match="the uploaded image is not an image"):
        open_image(b"\x89PNG garbage")
    assert read_image(good.read_bytes()).size == (50, 50)
    with pytest.raises(DataError, match="1 .gray. or 3 .colour. channels"):
        to_8bit(Image.new("L", (1, 1)), channels=2)
