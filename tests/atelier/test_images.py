from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from atelier.images import BadImage, check_output, decode_input


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming huge dimensions with almost no data: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def photo() -> Image.Image:
    img = Image.new("RGB", (200, 150), (240, 240, 240))
    img.paste((20, 40, 90), (50, 30, 150, 120))
    return img


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (encoded(photo(), "JPEG")[:300], "truncated or corrupt"),
        (png_header_only(30_000, 30_000), "decompression bomb"),
        (encoded(Image.new("RGB", (20, 20)), "PNG"), "too small"),
    ],
)
def test_hostile_inputs_are_refused_with_a_reason(data: bytes, fragment: str):
    with pytest.raises(BadImage, match=fragment):
        decode_input(data)


def test_good_input_decodes_to_rgb():
    assert decode_input(encoded(photo().convert("RGBA"), "PNG")).mode == "RGB"


def test_output_checks():
    good = encoded(photo(), "JPEG")
    assert check_output(good, 200, 150, "JPEG").passed
    assert "size is 200x150" in check_output(good, 100, 100, "JPEG").reason
    assert "format is JPEG" in check_output(good, 200, 150, "PNG").reason
    blank = encoded(Image.new("RGB", (200, 150), (255, 255, 255)), "PNG")
    assert "blank" in check_output(blank, 200, 150, "PNG").reason
    assert "does not decode" in check_output(good[:100], 200, 150, "JPEG").reason
