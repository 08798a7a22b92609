"""Pools: named step capacity shared by every worker, enforced through the database.

A pool has a global ``max_concurrency`` (running steps with a live lease, counted at claim
time) and an optional rate limit (step starts per period, a fixed window on the pool row).
Claims on a limited pool lock its row, so two workers cannot both take the last slot; a step
that finds no room stays ``pending`` and waits its turn in order: the worker that frees a slot
hands it to the oldest waiting step, and the sweep does the same for anything left over.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import connection

from workflows.core.models import MAX_RATE_PERIOD, MIN_RATE_PERIOD, Pool, Step, StepStatus

_cache: dict[str, tuple[float, PoolConfig]] = {}
# The lease owner of a slot reserved for a branch at fan-out, before a worker picks it up.
RESERVED = "(reserved)"
_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class PoolConfig:
    name: str
    max_concurrency: int | None
    rate_limit: int | None
    rate_period: float
    queue: str

    @property
    def is_limited(self) -> bool:
        return bool(self.max_concurrency) or bool(self.rate_limit)


def period_seconds(value: Any) -> float:
    """A pool's ``rate_period`` as the limiter uses it: a positive, finite number of seconds
    within ``MAX_RATE_PERIOD`` (a longer one is that), and 1 s for anything else, so that a
    row or a setting with an odd value (0, negative, NaN, 1e308) never fails a claim."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return 1.0
    if not math.isfinite(seconds) or seconds < MIN_RATE_PERIOD:
        return 1.0
    return min(seconds, MAX_RATE_PERIOD)


def _defaults(name: str) -> dict[str, Any]:
    conf = dict(settings.SLUICE_POOLS.get(name, {}))
    return {
        "max_concurrency": conf.get("max_concurrency"),
        "rate_limit": conf.get("rate_limit"),
        "rate_period": period_seconds(conf.get("rate_period") or 1.0),
    }


def queue_for(name: str) -> str:
    conf = settings.SLUICE_POOLS.get(name)
    if conf is None:
        return "default"
    return str(conf.get("queue") or name)


def get_pool(name: str) -> PoolConfig:
    """The pool's configuration: its row (admin-editable) or, the first time, the settings."""
    now = time.monotonic()
    hit = _cache.get(name)
    if hit is not None and now - hit[0] < _CACHE_SECONDS:
        return hit[1]
    row, _ = Pool.objects.get_or_create(name=name, defaults=_defaults(name))
    conf = PoolConfig(
        name=name,
        max_concurrency=row.max_concurrency,
        rate_limit=row.rate_limit,
        rate_period=period_seconds(row.rate_period),
        queue=queue_for(name),
    )
    _cache[name] = (now, conf)
    return conf


def clear_cache() -> None:
    _cache.clear()


def sync_pools_from_settings() -> None:
    """Create rows for the pools named in settings (existing rows keep their admin edits)."""
    for name in settings.SLUICE_POOLS:
        Pool.objects.get_or_create(name=name, defaults=_defaults(name))


def running_in(pool: str, now: datetime) -> int:
    return Step.objects.filter(
        pool=pool, status=StepStatus.RUNNING, lease_expires_at__gt=now
    ).count()


def try_acquire(pool_name: str, now: datetime) -> datetime | bool:
    """Call inside a transaction, just before marking a step of this pool running.

    Returns True when the step may start now; False when the pool is full (wait for a slot
    to be handed over); or a datetime when the rate limit is spent until then.
    """
    conf = get_pool(pool_name)
    if not conf.is_limited:
        return True
    # Lock the pool row: claims on one pool are serialized, so the count below stays true
    # until this transaction commits. (SQLite takes its write lock at BEGIN IMMEDIATE.)
    qs = Pool.objects.filter(pk=pool_name)
    if connection.features.has_select_for_update:
        qs = qs.select_for_update()
    row = qs.first()
    if row is None:  # The table was emptied under a cached configuration (tests, a reset).
        clear_cache()
        row, _ = Pool.objects.get_or_create(name=pool_name, defaults=_defaults(pool_name))
    if row.max_concurrency and running_in(pool_name, now) >= row.max_concurrency:
        return False
    if row.rate_limit:
        period = timedelta(seconds=period_seconds(row.rate_period))
        if row.window_start is None or now >= row.window_start + period:
            Pool.objects.filter(pk=pool_name).update(window_start=now, window_count=1)
        elif row.window_count >= row.rate_limit:
            return row.window_start + period
        else:
            Pool.objects.filter(pk=pool_name).update(window_count=row.window_count + 1)
    return True


def reserve(pool_name: str, wanted: int, now: datetime) -> int:
    """Call inside a transaction: how many of ``wanted`` new steps may take a slot now.

    The caller writes that many rows as running under the ``RESERVED`` owner with a short
    lease, so the count stays true after this transaction commits, and the workers that pick
    them up need no pool lock. A reservation nobody picks up expires like any lease.
    """
    conf = get_pool(pool_name)
    if not conf.max_concurrency or conf.rate_limit:
        return 0
    # One statement, built once: the pool row locked, and the count of its running steps
    # beside it. The ORM compiled the same query for each fan-out (a Subquery annotation),
    # about 1.5 ms of the fan-out's critical path.
    with connection.cursor() as cur:
        cur.execute(
            _reserve_sql(connection.features.has_select_for_update),
            [connection.ops.adapt_datetimefield_value(now), pool_name],
        )
        found = cur.fetchone()
    if found is None or not found[0]:
        return 0
    return max(0, min(wanted, found[0] - found[1]))


@lru_cache(maxsize=2)
def _reserve_sql(lock: bool) -> str:
    """The running status is written into the text, so that a generic plan can count through
    the partial index ``step_busy`` (pool, status) as a plan for the value would."""
    status = str(StepStatus.RUNNING)
    assert status.isidentifier()
    return (
        f"SELECT p.max_concurrency, (SELECT count(*) FROM {Step._meta.db_table} s "
        f"WHERE s.pool = p.name AND s.status = '{status}' AND s.lease_expires_at > %s) "
        f"FROM {Pool._meta.db_table} p WHERE p.name = %s" + (" FOR UPDATE" if lock else "")
    )
