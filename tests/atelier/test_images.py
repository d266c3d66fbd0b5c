from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from atelier.images import MAX_INPUT_PIXELS, MAX_OUTPUT_PIXELS, BadImage, check_output, decode_input
from atelier.providers.studio import cut_out


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
        (png_header_only(30_000, 30_000), "decompression bomb"),  # Pillow's own limit stops this one
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


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros: tens of KB that decode to width x height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(1)
    rows = b"\x00" * ((width + 1) * 100)
    idat = b"".join(packer.compress(rows) for _ in range(height // 100)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_bomb_only_our_pixel_limit_stops_is_refused_before_decoding():
    # Above MAX_INPUT_PIXELS but under Pillow's own bomb thresholds, so only our limit can stop it;
    # the file is a complete image, so without that limit it would decode (64 MB) and pass.
    width = height = 8000
    assert MAX_INPUT_PIXELS < width * height < Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImage, match=f"is {width}x{height} px, over {MAX_INPUT_PIXELS} px"):
        decode_input(png_bomb(width, height))


# -- real packshot formats (issue 6, item 15) ---------------------------------------------------
def png16(samples: np.ndarray) -> bytes:
    """A real 16-bit PNG (grey, grey+alpha, RGB or RGBA by the last axis) written chunk by chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    big_endian = samples.astype(">u2")
    height, width = big_endian.shape[:2]
    colour_type = 0 if big_endian.ndim == 2 else {2: 4, 3: 2, 4: 6}[big_endian.shape[2]]
    raw = b"".join(b"\x00" + big_endian[y].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# A light studio background (0.94) with a dark product in a known box: rows 60-239, columns 70-169.
BOX = (70, 60, 170, 240)


def scene(channels: int = 3) -> np.ndarray:
    img = np.full((300, 240, channels), 0.94)
    img[60:240, 70:170] = (0.10, 0.15, 0.35)[:channels] if channels <= 3 else (0.10, 0.15, 0.35, 1.0)
    return img


def assert_product_found(img: Image.Image, background: int = 240) -> None:
    assert img.mode == "RGB" and img.size == (240, 300)
    assert all(abs(v - background) <= 2 for v in img.getpixel((5, 5)))  # scaled, not clipped to white
    product = cut_out(img)
    assert abs(product.width - (BOX[2] - BOX[0])) <= 4 and abs(product.height - (BOX[3] - BOX[1])) <= 4


def tiff(img: Image.Image) -> bytes:
    return encoded(img, "TIFF")


@pytest.mark.parametrize(
    ("label", "data", "mode"),
    [
        ("16-bit grey PNG", png16((scene(1)[..., 0] * 65535).round()), "I;16"),
        ("16-bit grey TIFF", tiff(Image.fromarray((scene(1)[..., 0] * 65535).round().astype(np.uint16))), "I;16"),
        ("32-bit TIFF of 16-bit values", tiff(Image.fromarray((scene(1)[..., 0] * 65535).astype(np.int32), "I")), "I"),
        ("float TIFF in 0..1", tiff(Image.fromarray(scene(1)[..., 0].astype(np.float32), "F")), "F"),
        ("48-bit RGB PNG", png16((scene(3) * 65535).round()), "RGB"),
        ("64-bit RGBA PNG", png16((scene(4) * 65535).round()), "RGBA"),
    ],
)
def test_high_bit_depth_packshots_are_scaled_to_8_bit(label: str, data: bytes, mode: str):
    assert Image.open(io.BytesIO(data)).mode == mode  # the decoder really sees this mode
    assert_product_found(decode_input(data))


def upright_packshot() -> Image.Image:
    """Portrait, with the product in the top-left quarter: any rotation or flip moves it."""
    img = Image.new("RGB", (240, 320), (240, 240, 240))
    img.paste((20, 40, 90), (30, 20, 110, 170))
    return img


@pytest.mark.parametrize(
    ("orientation", "stored_as"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),  # the camera was turned: stored sideways, shown upright
        (8, Image.Transpose.ROTATE_270),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation_is_applied(orientation: int, stored_as: Image.Transpose):
    upright = upright_packshot()
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    upright.transpose(stored_as).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_input(buf.getvalue())
    assert decoded.size == upright.size
    diff = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(upright, dtype=np.int16)).mean()
    assert diff < 3, f"decoded packshot differs from the upright one by {diff:.1f} per pixel"
    box = cut_out(decoded).size
    assert abs(box[0] - 80) <= 4 and abs(box[1] - 150) <= 4  # a tall product, as shot


def test_transparent_packshots_are_flattened_onto_white():
    # A black dress delivered as a transparent PNG: its transparent pixels are black too.
    rgba = Image.new("RGBA", (240, 300), (0, 0, 0, 0))
    rgba.paste((12, 12, 12, 255), BOX)
    grey_alpha = rgba.convert("LA")
    palette = rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = palette.getpixel((0, 0))
    for img in (rgba, grey_alpha, palette):
        assert_product_found(decode_input(encoded(img, "PNG")), background=255)


def test_cmyk_and_palette_packshots_decode():
    rgb = Image.fromarray((scene(3) * 255).round().astype(np.uint8), "RGB")
    for img, fmt in (
        (rgb.convert("CMYK"), "JPEG"),
        (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        (rgb.convert("L"), "PNG"),
    ):
        assert_product_found(decode_input(encoded(img, fmt)), background=240)


# -- outputs: the declared size is checked before decoding (issue 6, item 7) --------------------
@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every image Pillow decodes during the test, by size."""
    seen: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        seen.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return seen


def test_an_output_declaring_another_size_is_refused_without_decoding(loads: list[tuple[int, int]]):
    check = check_output(png_bomb(6000, 6000), 1024, 1024, "PNG")  # 36 MB of pixels, under the cap
    assert not check.passed and check.reason == "size is 6000x6000, expected 1024x1024"
    assert loads == []


def test_an_output_over_the_pixel_cap_is_refused_without_decoding(loads: list[tuple[int, int]]):
    side = 9000  # a (misconfigured) spec this big: the file matches it, the cap still holds
    assert MAX_OUTPUT_PIXELS < side * side < Image.MAX_IMAGE_PIXELS
    check = check_output(png_bomb(side, side), side, side, "PNG")
    assert not check.passed and f"declares {side}x{side} px, over {MAX_OUTPUT_PIXELS} px" in check.reason
    assert loads == []


def test_a_good_output_is_decoded_once(loads: list[tuple[int, int]]):
    assert check_output(encoded(photo(), "PNG"), 200, 150, "PNG").passed
    assert loads[:1] == [(200, 150)]
