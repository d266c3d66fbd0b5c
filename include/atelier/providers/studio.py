"""The local studio renderer: a deterministic stand-in for a generative model, labelled as such.

It cuts the product out of its light packshot background, grades it, and composites it onto the
brand's backdrop with a contact shadow, once per output spec. Same input bytes, spec, brand and
Pillow version give the same output bytes.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from atelier.catalog import Brand, OutputSpec
from atelier.images import BadImage, decode_input
from atelier.providers.base import Capabilities

# The cut-out is made at a working resolution chosen from the output spec alone (so a render's bytes
# depend only on input × spec × model version), never larger than the output needs.
WORK_TIERS = (384, 768, 1400)
MASK_THRESHOLD = 26


def _hex(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def work_side(spec: OutputSpec) -> int:
    need = 1.25 * max(spec.width, spec.height)
    return next((t for t in WORK_TIERS if t >= need), WORK_TIERS[-1])


def cut_out(img: Image.Image, max_side: int = WORK_TIERS[-1]) -> Image.Image:
    """RGBA crop of the product: pixels that differ from the border's (background) colour."""
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.int16)
    h, w, _ = arr.shape
    b = max(2, min(h, w) // 50)
    border = np.concatenate(
        [arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3), arr[:, :b].reshape(-1, 3), arr[:, -b:].reshape(-1, 3)]
    )
    background = np.median(border, axis=0)
    distance = np.abs(arr - background).max(axis=2)
    mask = Image.fromarray(((distance > MASK_THRESHOLD) * 255).astype(np.uint8), "L")
    # Closing fills pin-holes in light fabric; a small blur gives the cut a soft edge.
    mask = mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.MinFilter(5)).filter(ImageFilter.GaussianBlur(1.2))
    bbox = mask.point(lambda v: 255 if v > 128 else 0).getbbox()
    if bbox is None:
        raise BadImage("no product found against the background")
    bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
    if bw * bh > 0.97 * w * h:
        raise BadImage("no studio background found around the product (cut-out covers the whole image)")
    product = img.crop(bbox).convert("RGBA")
    product.putalpha(mask.crop(bbox))
    graded = ImageEnhance.Color(ImageEnhance.Contrast(product.convert("RGB")).enhance(1.06)).enhance(1.05)
    graded.putalpha(product.getchannel("A"))
    return graded


def _backdrop(spec: OutputSpec, brand: Brand) -> Image.Image:
    top, bottom = np.array(_hex(brand.backdrop_top), float), np.array(_hex(brand.backdrop_bottom), float)
    t = np.linspace(0.0, 1.0, spec.height)[:, None]
    column = (top * (1 - t) + bottom * t).astype(np.uint8)  # vertical gradient, one column
    return Image.fromarray(np.repeat(column[:, None, :], spec.width, axis=1), "RGB")


def compose(product: Image.Image, spec: OutputSpec, brand: Brand) -> Image.Image:
    canvas = _backdrop(spec, brand)
    scale = min(spec.width * 0.78 / product.width, spec.height * 0.74 / product.height)
    pw, ph = max(1, round(product.width * scale)), max(1, round(product.height * scale))
    fitted = product.resize((pw, ph), Image.Resampling.LANCZOS)
    x = (spec.width - pw) // 2
    floor = round(spec.height * 0.88)
    y = floor - ph
    # Contact shadow: a blurred ellipse on the floor, under the product.
    shadow = Image.new("L", canvas.size, 0)
    ew, eh = round(pw * 0.9), max(4, round(spec.height * 0.035))
    ImageDraw.Draw(shadow).ellipse(
        [x + (pw - ew) // 2, floor - eh // 2, x + (pw + ew) // 2, floor + eh // 2],
        fill=round(255 * brand.shadow_strength),
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(2, spec.height // 90)))
    canvas.paste((30, 26, 22), (0, 0), shadow)
    canvas.paste(fitted, (x, y), fitted)
    return canvas


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=90, subsampling=0)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=6)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=88, method=4)
    else:
        raise ValueError(f"unsupported output format {fmt}")
    return buf.getvalue()


class StudioRenderer:
    name = "studio"
    model_version = f"studio-renderer/1.2 (pillow {PIL.__version__})"  # 1.2: EXIF upright, 16-bit scaled
    capabilities = Capabilities(max_in_flight=3, rps=0, idempotency_keys=False, mode="sync")

    def __init__(self) -> None:
        # The specs of one SKU are rendered one after another: keep its recent cut-outs. One
        # instance serves every thread of a task (as a fallback of a remote provider): guard it.
        self._cutouts: OrderedDict[tuple[str, int], Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, source: bytes, spec: OutputSpec, brand: Brand, key: str = "") -> bytes:
        side = work_side(spec)
        cache_key = (hashlib.sha256(source).hexdigest(), side)
        with self._lock:
            product = self._cutouts.get(cache_key)
        if product is None:
            product = cut_out(decode_input(source), side)
            with self._lock:
                self._cutouts[cache_key] = product
                while len(self._cutouts) > 4:
                    self._cutouts.popitem(last=False)
        return encode(compose(product, spec, brand), spec.format)

    def render_all(self, source: bytes, specs: list[OutputSpec], brand: Brand) -> dict[str, bytes]:
        return {spec.name: self.render(source, spec, brand) for spec in specs}
