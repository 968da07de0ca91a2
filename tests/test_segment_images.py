"""How ``experiments.segment`` reads images: 16-bit images scaled to 8 bits (not saturated) and
the EXIF orientation applied as image viewers do, depth files checked against the oriented size.
No network runs here (``test_segment.py`` segments such images with a trained run)."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from experiments.segment import SegmentError, load_inputs, read_image

EXIF_ORIENTATION = 0x0112  # TIFF/EXIF tag
ROTATED_90_CW = 6  # the pixels are stored rotated: a viewer turns them 90 degrees clockwise


def png16(path, pixels: np.ndarray):
    """``pixels`` uint16 (H, W, C), C in 1..4, as a 16-bit PNG (PIL writes 16-bit grey only)."""
    h, w, c = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def grey16(h=12, w=10) -> np.ndarray:
    """A uint16 ramp over the whole 16-bit range (0 and 65535 included)."""
    values = np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)
    return values


def test_16bit_grey_png_is_scaled_not_saturated(tmp_path):
    values = grey16()
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)  # PIL mode I;16
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (*values.shape, 3)
    expected = np.round(values / 257.0).astype(np.uint8)  # 65535 -> 255, 257 -> 1
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)
    assert (rgb == 255).mean() < 0.05  # saturated before: nearly every pixel was 255


def test_16bit_grey_written_by_hand_and_big_endian_tiff(tmp_path):
    values = grey16(7, 9)
    expected = np.round(values / 257.0).astype(np.uint8)
    by_hand = png16(tmp_path / "by_hand.png", values[..., None])
    tiff = tmp_path / "big_endian.tif"
    Image.fromarray(values.astype(">u2")).save(tiff)  # PIL mode I;16B
    with Image.open(tiff) as im:
        assert im.mode == "I;16B"
    for path in (by_hand, tiff):
        np.testing.assert_array_equal(read_image(path), np.repeat(expected[..., None], 3, -1))


def test_16bit_rgb_and_rgba_pngs_keep_their_brightness(tmp_path):
    rng = np.random.default_rng(0)
    for channels in (3, 4):
        values = rng.integers(0, 65536, (6, 8, channels), dtype=np.uint16)
        rgb = read_image(png16(tmp_path / f"rgb{channels}.png", values))
        expected = values[..., :3] / 257.0
        assert rgb.shape == (6, 8, 3)
        assert np.abs(rgb - expected).max() <= 1.0  # PIL keeps the high byte: within one level


@pytest.mark.parametrize("dtype, mode", [(np.int32, "I"), (np.float32, "F")])
def test_images_of_unknown_range_are_refused_with_the_reason(tmp_path, dtype, mode):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(np.full((5, 6), 1000, dtype)).save(path)
    with pytest.raises(SegmentError) as e:
        read_image(path)
    message = str(e.value)
    assert message.startswith(f"image {path}: ") and f"mode {mode}" in message
    assert "8- or 16-bit" in message and "\n" not in message


def rotated_jpeg(path, h=16, w=24):
    """A JPEG stored (h, w) with EXIF orientation 6: shown (w, h)."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    Image.fromarray(np.repeat(np.repeat(blocks, 8, 0), 8, 1)).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied(tmp_path):
    path = rotated_jpeg(tmp_path / "rotated.jpg")
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    assert stored.shape == (16, 24, 3)
    rgb = read_image(path)
    assert rgb.shape == (24, 16, 3)
    np.testing.assert_array_equal(rgb, np.rot90(stored, k=-1))  # turned 90 degrees clockwise


def test_depth_is_checked_against_the_oriented_size(tmp_path):
    path = rotated_jpeg(tmp_path / "rotated.jpg")
    upright = tmp_path / "upright.npy"
    np.save(upright, np.full((24, 16), 2.0, np.float32))
    (x,) = load_inputs([str(path)], [str(upright)])
    assert x.image.shape == (24, 16, 3) and x.depth.shape == (24, 16)
    stored = tmp_path / "stored.png"  # 16-bit millimetres, the size the pixels are stored at
    Image.fromarray(np.full((16, 24), 2000, np.uint16)).save(stored)
    with pytest.raises(SegmentError) as e:
        load_inputs([str(path)], [str(stored)])
    message = str(e.value)
    assert f"depth {stored}: size 24x16 (WxH) differs from image {path} (16x24" in message
    assert "EXIF orientation" in message and "\n" not in message


def test_16bit_png_with_exif_orientation_is_turned_and_scaled(tmp_path):
    values = grey16(12, 10)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    path = tmp_path / "turned16.png"
    Image.fromarray(values).save(path, exif=exif)
    expected = np.rot90(np.round(values / 257.0).astype(np.uint8), k=-1)
    np.testing.assert_array_equal(read_image(path), np.repeat(expected[..., None], 3, -1))
