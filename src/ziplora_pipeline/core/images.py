"""Reference images in, training-ready RGB squares out, with an error naming every bad file."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)


class ImageInputError(ValueError):
    """A reference image cannot be used; the message names the file and the fix."""


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode ``data`` fully (so truncated files fail here, not mid-training)."""
    if not data:
        raise ImageInputError(f"{name}: the file is empty (0 bytes). Replace or delete it.")
    try:
        with warnings.catch_warnings():  # above MAX_IMAGE_PIXELS Pillow only warns (above twice that it raises)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(f"{name}: too many pixels to decode safely ({err}). This is Pillow's decompression-bomb "
                              f"limit of {Image.MAX_IMAGE_PIXELS} pixels; downscale the image (a few megapixels is "
                              "plenty: it is resized to the training resolution) or remove it.") from err
    except UnidentifiedImageError as err:
        raise ImageInputError(f"{name}: not an image file Pillow can read. Remove it from the folder.") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt streams
        raise ImageInputError(f"{name}: the image is corrupt or truncated ({err}). Re-export or delete it.") from err
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, RGBA, CMYK, 16-bit, float) to 8-bit RGB.

    Transparent pixels are composited on white, the usual background for product-style shots.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/32-bit single channel: rescale the used range to 0..255 instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def square_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square and resize to ``resolution`` (Lanczos, as DreamBooth scripts do)."""
    return ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def prepare_image(data: bytes, name: str, resolution: int) -> Image.Image:
    """Decode, validate size, convert to RGB and square-resize one reference image.

    Raises:
        ImageInputError: unreadable, truncated or smaller than half the training resolution.
    """
    img = decode_image(data, name)
    if min(img.size) < resolution / 2:
        raise ImageInputError(
            f"{name}: {img.size[0]}x{img.size[1]} px is smaller than half the training resolution "
            f"({resolution} px). Use a larger image (at least {resolution // 2} px on the short side)."
        )
    return square_resize(to_rgb(img), resolution)


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> float tensor in [-1, 1], shape (N, 3, H, W), as the VAE expects."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
