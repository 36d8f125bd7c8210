"""Reference images in any common mode come out as upright 8-bit RGB squares of the training size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import RESOLUTION, SUBJECT_PARAMS
from ziplora_pipeline.pipelines.data_prep.nodes import prepare_subject

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _prepare_one(data: bytes, name: str = "robot/x.png") -> Image.Image:
    images, _ = prepare_subject({name: lambda: data}, SUBJECT_PARAMS, RESOLUTION)
    (img,) = images.values()
    assert img.mode == "RGB" and img.size == (RESOLUTION, RESOLUTION)
    return img


def _dominant(img: Image.Image, x: int, y: int) -> str:
    r, g, b = img.getpixel((x, y))
    return "red" if r > b + 80 else "blue" if b > r + 80 else f"neither {r, g, b}"


def _top_red_bottom_blue(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), BLUE)
    img.paste(RED, (0, 0, w, h // 2))
    return img


def test_upright_jpeg_keeps_its_layout():
    img = _prepare_one(_encode(_top_red_bottom_blue(128, 64), "JPEG", quality=95), "robot/x.jpg")
    assert _dominant(img, 32, 5) == "red" and _dominant(img, 32, 58) == "blue"


def test_exif_rotated_jpeg_comes_out_rotated():
    """Stored 128x64 (red top, blue bottom) with EXIF Orientation 6 ("rotate 90 CW to view").

    Viewed upright it is 64x128 with red on the right: the centre square must be blue left, red right.
    """
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_top_red_bottom_blue(128, 64), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    img = _prepare_one(data, "robot/phone.jpg")
    assert _dominant(img, 5, 32) == "blue" and _dominant(img, 58, 32) == "red"


def test_rgba_becomes_rgb_on_white():
    img = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # transparent black...
    img.paste((200, 0, 0, 255), (25, 25, 75, 75))  # ...with an opaque red square in the middle
    out = _prepare_one(_encode(img))
    assert out.getpixel((2, 2)) == (255, 255, 255)  # transparency -> white, not black
    assert _dominant(out, 32, 32) == "red"


def test_palette_with_transparency_becomes_rgb():
    img = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    img.paste((0, 0, 200, 255), (20, 20, 60, 60))
    out = _prepare_one(_encode(img.convert("P")))
    assert _dominant(out, 32, 32) == "blue"


def test_grayscale_becomes_rgb():
    out = _prepare_one(_encode(Image.new("L", (90, 70), 128)))
    r, g, b = out.getpixel((10, 10))
    assert r == g == b and abs(r - 128) <= 1


def test_cmyk_becomes_rgb():
    img = Image.new("CMYK", (96, 96), (0, 255, 255, 0))  # full magenta + yellow = red
    data = _encode(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert _dominant(_prepare_one(data, "robot/print.jpg"), 32, 32) == "red"


@pytest.mark.parametrize(("dtype", "fmt", "mode"), [
    (np.uint16, "PNG", "I;16"),  # 16-bit grayscale PNG (scanners, medical, astro)
    (np.uint16, "TIFF", "I;16"),
    (np.int32, "TIFF", "I"),  # 32-bit integer TIFF
])
def test_high_bit_depth_grayscale_becomes_rgb_with_its_range_rescaled(dtype, fmt, mode):
    ramp = np.tile(np.linspace(1000, 60000, 96), (96, 1)).astype(dtype)
    data = _encode(Image.fromarray(ramp), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # really that depth on disk
    out = np.asarray(_prepare_one(data, f"robot/deep.{fmt.lower()}"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # rescaled to the used range, not clipped to white: a dark-to-bright ramp left to right
    assert out[:, 0, 0].mean() < 20 and out[:, -1, 0].mean() > 235
