from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from atelier import planning


def assign(n: int, size: int) -> list[int]:
    return [planning.shard_of(i, size) for i in range(n)]


@given(st.integers(min_value=1, max_value=200_000), st.integers(min_value=1, max_value=64))
def test_auto_sizing_puts_every_sku_in_exactly_one_shard_within_the_cap(n: int, parallel: int):
    size = planning.shard_size(n, 0, parallel)
    shards = assign(n, size)
    count = planning.shard_count(n, size)
    assert sorted(set(shards)) == list(range(count))  # contiguous, none empty
    assert len(shards) == n  # each SKU once
    assert count <= planning.MAX_SHARDS
    if size < planning.MIN_SHARD:  # a small drop: one wave of the pool, as even as contiguous shards get
        assert count <= parallel and size == -(-n // parallel)
    else:  # beyond that, no shards smaller than needed
        assert size in (planning.MIN_SHARD, -(-n // planning.MAX_SHARDS)) or count <= parallel


def test_auto_sizing_examples():
    assert planning.shard_size(10, 0, 3) == 4  # 3 shards: one wave of a 3-slot pool
    assert planning.shard_size(2, 0, 3) == 1
    assert planning.shard_size(40, 0, 3) == 14
    assert planning.shard_size(2000, 0, 3) == 50  # 40 shards
    assert planning.shard_size(100_000, 0, 3) == 391  # 256 shards


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
