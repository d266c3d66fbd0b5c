"""Shard sizing: how a drop's SKUs are split into mapped render tasks. Pure functions.

Every task instance costs Airflow start-up (1.5-3 s measured on the 2-core machine, more than a
studio render) and the scheduler degrades past a few hundred mapped instances per run, so drops map
over shards of SKUs, never one task per SKU: as few shards as fill the provider's pool (a small
drop renders in one wave), and no smaller than MIN_SHARD SKUs once there are more.
"""

from __future__ import annotations

import math

# At least this many SKUs per shard once the pool is full: ~9 s of studio work per shard for one
# small spec (0.17 s a render inside a task, measured). At 20
# SKUs, task start-up (2.8 s a task) held 36 % of the studio pool's slot time in a 2,000-SKU drop
# (measured); much longer shards would make a high-priority drop wait longer for a slot.
MIN_SHARD = 50
MAX_SHARDS = 256  # ... and never more than this many mapped task instances per run
MAP_LIMIT = 1024  # Airflow's [core] max_map_length: the ceiling for an explicitly requested shard size
MAX_SHARD_SIZE = 10_000  # the largest shard size a trigger may ask for


def shard_size(skus_to_render: int, requested: int = 0, parallel: int = 1) -> int:
    """SKUs per shard. Automatic sizing: up to MIN_SHARD × ``parallel`` SKUs (``parallel``: the
    provider pool's slots, how many shards run at once), shards of ceil(n / parallel) SKUs, so the
    drop renders in one wave; beyond that, shards of MIN_SHARD SKUs or more, and never more than
    MAX_SHARDS mapped tasks. An explicit ``requested`` > 0 is honoured up to Airflow's map limit."""
    if skus_to_render <= 0:
        return 1
    if requested > 0:
        return max(requested, math.ceil(skus_to_render / MAP_LIMIT))
    fill_the_pool = math.ceil(skus_to_render / max(1, parallel))
    return max(1, min(fill_the_pool, max(MIN_SHARD, math.ceil(skus_to_render / MAX_SHARDS))))


def shard_count(skus_to_render: int, size: int) -> int:
    return math.ceil(skus_to_render / size) if skus_to_render > 0 else 0


def shard_of(position: int, size: int) -> int:
    """The shard of the SKU at 0-based ``position`` among the SKUs to render."""
    return position // size


def shard_label(first_sku: str, last_sku: str, count: int) -> str:
    """The mapped task's name in the UI."""
    if count == 1:
        return first_sku
    return f"{first_sku} … {last_sku} ({count} SKUs)"
