"""Decoding untrusted images safely, and the checks every rendered output must pass.

Sizes are read from the header before any pixel is decoded, so a small file that declares huge
dimensions (a decompression bomb) is refused without being decompressed, on input and on output.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

MAX_INPUT_BYTES = 40 * 1024 * 1024
MAX_INPUT_PIXELS = 40_000_000  # ~6300 x 6300; anything larger is treated as a decompression bomb
MAX_OUTPUT_PIXELS = 40_000_000  # outputs must match their spec exactly; this bounds a misconfigured spec too
MIN_INPUT_SIDE = 64
BACKGROUND = (255, 255, 255)  # transparent areas of a packshot become studio white
ORIENTATION = 0x0112  # the EXIF tag
HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class BadImage(ValueError):
    """The input image cannot be used; the message is the reason recorded on the render."""


def decode_input(data: bytes) -> Image.Image:
    """Opens a packshot as upright 8-bit RGB: rejects empty, oversized, truncated, non-image and
    bomb inputs (by the declared size, before decoding); applies the EXIF orientation; scales 16-bit
    and 32-bit pixels down to 8 bits; flattens transparency onto white."""
    if not data:
        raise BadImage("input image is empty (0 bytes)")
    if len(data) > MAX_INPUT_BYTES:
        raise BadImage(f"input image is {len(data)} bytes (max {MAX_INPUT_BYTES})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_INPUT_PIXELS:
                raise BadImage(f"input image is {width}x{height} px, over {MAX_INPUT_PIXELS} px (decompression bomb?)")
            if min(width, height) < MIN_INPUT_SIDE:
                raise BadImage(f"input image is {width}x{height} px, too small to render from")
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"input image refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("input is not an image Pillow can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"input image is truncated or corrupt ({exc})") from exc
    mode = img.mode
    try:
        return to_rgb8(upright(img))
    except Exception as exc:  # an exotic mode Pillow decodes but cannot convert
        raise BadImage(f"input image mode {mode} cannot be converted to RGB ({type(exc).__name__}: {exc})") from exc


def upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: rotated/flipped by its EXIF orientation (phone
    packshots are stored sideways with an orientation tag). Unreadable EXIF leaves it as stored."""
    try:
        orientation = img.getexif().get(ORIENTATION, 1)
    except Exception:  # malformed EXIF is common in the wild and says nothing about the pixels
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    return ImageOps.exif_transpose(img)


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB. High bit depths are scaled, never clipped (a 16-bit grey of 40000 is 156, not
    255); palette, grey and alpha modes are converted, transparency composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in HIGH_BIT_DEPTH:
        return Image.fromarray(_scale_to_8bit(img), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr


def _scale_to_8bit(img: Image.Image) -> Any:
    """A grey image of more than 8 bits per pixel as a uint8 array. 16-bit data keeps its high byte
    (as Pillow does for 48-bit RGB); 32-bit and float data is scaled by its range."""
    import numpy as np

    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return (arr.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    lo, hi = (float(v) for v in img.getextrema())
    if img.mode == "F" and lo >= 0 and hi <= 1.0:
        scale, lo = 255.0, 0.0  # normalised float
    elif lo >= 0 and hi <= 255:
        scale, lo = 1.0, 0.0  # 8-bit values in a wide container
    elif lo >= 0 and hi <= 65535:
        scale, lo = 1 / 256, 0.0  # 16-bit values (e.g. a 16-bit PNG or TIFF read as mode I)
    else:
        scale = 255.0 / max(hi - lo, 1e-9)
    out = (arr.astype(np.float32) - lo) * scale
    return np.clip(np.floor(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class OutputCheck:
    passed: bool
    reason: str | None
    width: int
    height: int
    format: str


def check_output(data: bytes, width: int, height: int, fmt: str, min_stddev: float = 4.0) -> OutputCheck:
    """An output passes when it decodes, has the exact size and format, and is not blank. The format
    and the dimensions the header declares are checked before a pixel is decoded: a small file that
    declares a different or huge size is refused without being decompressed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return OutputCheck(False, f"output does not decode (not an image: {len(data)} bytes)", 0, 0, "")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return OutputCheck(False, f"output refused as a decompression bomb ({exc})", 0, 0, "")
    except Exception as exc:  # any decoder failure means the output is unusable
        return OutputCheck(False, f"output does not decode ({type(exc).__name__}: {exc})", 0, 0, "")
    got_fmt = img.format or ""
    w, h = img.size
    if got_fmt != fmt:
        return OutputCheck(False, f"format is {got_fmt}, expected {fmt}", w, h, got_fmt)
    if w * h > MAX_OUTPUT_PIXELS:
        reason = f"output declares {w}x{h} px, over {MAX_OUTPUT_PIXELS} px (decompression bomb?)"
        return OutputCheck(False, reason, w, h, got_fmt)
    if (w, h) != (width, height):
        return OutputCheck(False, f"size is {w}x{h}, expected {width}x{height}", w, h, got_fmt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Exception as exc:
        return OutputCheck(False, f"output does not decode ({type(exc).__name__}: {exc})", w, h, got_fmt)
    stddev = max(ImageStat.Stat(img.convert("RGB")).stddev)
    if stddev < min_stddev:
        return OutputCheck(False, f"output is blank (pixel stddev {stddev:.2f})", width, height, got_fmt)
    return OutputCheck(True, None, width, height, got_fmt)
