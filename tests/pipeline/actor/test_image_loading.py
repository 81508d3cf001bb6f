"""Image loading: EXIF orientation applied, grayscale / RGBA / palette / 16-bit converted to RGB, bad files named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.actor.image_loading import ImageError, decode_image, read_image


def _encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:5, :10] = 255  # a white corner top-left in the stored layout
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = decode_image(_encoded(img, "PNG", exif=exif.tobytes()), "rotated.png")
    assert out.shape == (40, 20, 3)
    assert out[:10, -5:].min() == 255 and out[-10:, :5].max() == 0  # the corner is now top-right


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_every_mode_becomes_rgb(mode):
    gray = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        img = Image.fromarray(gray).convert(mode)
    out = decode_image(_encoded(img, "TIFF" if mode == "CMYK" else "PNG"), f"{mode}.png")
    assert out.dtype == np.uint8 and out.shape == (30, 20, 3)
    if mode in ("L", "RGBA", "LA", "I;16"):
        assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ImageError, match="broken.jpg: not a readable image"):
        decode_image(b"not an image", "broken.jpg")
    with pytest.raises(ImageError, match="not found"):
        read_image(str(tmp_path / "missing.png"), None)
