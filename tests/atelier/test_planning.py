from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atelier import planning


def assign(n: int, size: int) -> list[int]:
    return [planning.shard_of(i, size) for i in range(n)]


@given(st.integers(min_value=1, max_value=200_000))
def test_auto_sizing_puts_every_sku_in_exactly_one_shard_within_the_cap(n: int):
    size = planning.shard_size(n)
    shards = assign(n, size)
    count = planning.shard_count(n, size)
    assert sorted(set(shards)) == list(range(count))  # contiguous, none empty
    assert len(shards) == n  # each SKU once
    assert count <= planning.MAX_SHARDS
    if n <= planning.SMALL_DROP:
        assert size == 1
    else:
        assert size >= planning.MIN_SHARD


@given(st.integers(min_value=1, max_value=200_000), st.integers(min_value=1, max_value=10_000))
def test_requested_size_never_exceeds_airflow_map_limit(n: int, requested: int):
    size = planning.shard_size(n, requested)
    assert size >= requested
    assert planning.shard_count(n, size) <= planning.MAP_LIMIT
    if n <= requested * planning.MAP_LIMIT:
        assert size == requested


def test_labels():
    assert planning.shard_label("A", "A", 1) == "A"
    assert planning.shard_label("A", "Z", 20) == "A … Z (20 SKUs)"
