"""Decoding untrusted images safely, and the checks every rendered output must pass."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageStat, UnidentifiedImageError

MAX_INPUT_BYTES = 40 * 1024 * 1024
MAX_INPUT_PIXELS = 40_000_000  # ~6300 x 6300; anything larger is treated as a decompression bomb
MIN_INPUT_SIDE = 64


class BadImage(ValueError):
    """The input image cannot be used; the message is the reason recorded on the render."""


def decode_input(data: bytes) -> Image.Image:
    """Opens a packshot: rejects empty, oversized, truncated, non-image and bomb inputs."""
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
    return img.convert("RGB")


@dataclass(frozen=True)
class OutputCheck:
    passed: bool
    reason: str | None
    width: int
    height: int
    format: str


def check_output(data: bytes, width: int, height: int, fmt: str, min_stddev: float = 4.0) -> OutputCheck:
    """An output passes when it decodes, has the exact size and format, and is not blank."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        return OutputCheck(False, f"output does not decode (not an image: {len(data)} bytes)", 0, 0, "")
    except Exception as exc:  # any decoder failure means the output is unusable
        return OutputCheck(False, f"output does not decode ({type(exc).__name__}: {exc})", 0, 0, "")
    got_fmt = img.format or ""
    if got_fmt != fmt:
        return OutputCheck(False, f"format is {got_fmt}, expected {fmt}", img.width, img.height, got_fmt)
    if img.size != (width, height):
        return OutputCheck(False, f"size is {img.width}x{img.height}, expected {width}x{height}", *img.size, got_fmt)
    stddev = max(ImageStat.Stat(img.convert("RGB")).stddev)
    if stddev < min_stddev:
        return OutputCheck(False, f"output is blank (pixel stddev {stddev:.2f})", width, height, got_fmt)
    return OutputCheck(True, None, width, height, got_fmt)
