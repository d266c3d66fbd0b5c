from __future__ import annotations

import io

import pytest
from PIL import Image

from atelier import catalog
from atelier.images import BadImage, check_output
from atelier.providers.studio import StudioRenderer
from atelier.samples import packshot

BRAND = catalog.brand("maison-demo")
SPECS = list(catalog.all_specs().values())


@pytest.fixture(scope="module")
def source() -> bytes:
    return packshot(3, seed=11)[2]


def test_every_spec_has_exact_size_format_and_content(source: bytes):
    out = StudioRenderer().render_all(source, SPECS, BRAND)
    assert set(out) == {s.name for s in SPECS}
    for spec in SPECS:
        check = check_output(out[spec.name], spec.width, spec.height, spec.format)
        assert check.passed, (spec.name, check.reason)


def test_rendering_is_deterministic(source: bytes):
    first = StudioRenderer().render_all(source, SPECS, BRAND)
    second = StudioRenderer().render_all(source, SPECS, BRAND)
    assert first == second


def test_product_is_cut_out_onto_the_brand_backdrop(source: bytes):
    spec = catalog.all_specs()["thumb_320"]
    img = Image.open(io.BytesIO(StudioRenderer().render(source, spec, BRAND))).convert("RGB")
    top = BRAND.backdrop_top.lstrip("#")
    expected = tuple(int(top[i : i + 2], 16) for i in (0, 2, 4))
    assert all(abs(a - b) <= 3 for a, b in zip(img.getpixel((2, 2)), expected, strict=True))  # backdrop, not packshot
    assert img.getpixel((160, 170)) != img.getpixel((2, 2))  # the product is in the middle


def test_other_brand_or_input_changes_the_output(source: bytes):
    spec = catalog.all_specs()["thumb_320"]
    a = StudioRenderer().render(source, spec, BRAND)
    b = StudioRenderer().render(source, spec, catalog.brand("atelier-test"))
    c = StudioRenderer().render(packshot(4, seed=11)[2], spec, BRAND)
    assert len({a, b, c}) == 3


def test_blank_packshot_has_no_product():
    buf = io.BytesIO()
    Image.new("RGB", (400, 400), (240, 240, 240)).save(buf, "JPEG")
    with pytest.raises(BadImage, match="no product"):
        StudioRenderer().render(buf.getvalue(), SPECS[0], BRAND)


def test_samples_are_deterministic_and_sized():
    a, b = packshot(5, 1), packshot(5, 1)
    assert a == b and packshot(6, 1)[2] != a[2]
    w, h = Image.open(io.BytesIO(a[2])).size
    assert 800 <= w <= 1200 and 800 <= h <= 1200


def test_a_specs_bytes_do_not_depend_on_the_other_specs_rendered_with_it(source: bytes):
    specs = catalog.all_specs()
    alone = StudioRenderer().render(source, specs["bench_small_128"], BRAND)
    together = StudioRenderer().render_all(source, list(specs.values()), BRAND)
    assert alone == together["bench_small_128"]
