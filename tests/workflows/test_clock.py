"""The engine's clock is the database's: a worker whose host clock is seconds off the others'
made live leases look expired (the sweep ran a running step a second time), or kept a dead
worker's lease for the whole difference. Each process now corrects its engine times by its
measured offset to PostgreSQL's clock (``workflows.core.clock``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import start
from workflows.core import clock, leases
from workflows.core.sweeper import sweep
from workflows.models import Run, Step

pytestmark = [pytest.mark.django_db(transaction=True)]


def db_now() -> datetime:
    with connection.cursor() as cur:
        cur.execute("SELECT clock_timestamp()")
        return cur.fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize("seconds", [-7.0, 10.0])
def test_a_lease_is_written_on_the_databases_clock(skew: Any, seconds: float) -> None:
    skew(seconds)
    clock.refresh()
    assert abs(clock.offset().total_seconds() + seconds) < 0.5
    expected = db_now() + timedelta(seconds=leases.lease_seconds())
    assert abs((leases.lease_until() - expected).total_seconds()) < 0.5


def test_a_sweep_on_a_clock_that_runs_ahead_leaves_a_live_lease_alone(
    bell: Bell, skew: Any
) -> None:
    run = start(samples.fanout, {"items": [7]})
    bell.drain(limit=1)
    bell.lose_all()
    branch = Step.objects.get(run=run, position=1, branch=0)
    # Running under a live lease, written by a worker on the right time.
    Step.objects.filter(pk=branch.pk).update(
        status="running", attempt=1, lease_owner="live:1", lease_expires_at=leases.lease_until()
    )
    skew(10.0)  # the sweeping worker's clock is 10 s ahead
    assert sweep()["steps_reclaimed"] == 0
    assert Step.objects.get(pk=branch.pk).lease_owner == "live:1"


def test_a_dead_workers_lease_written_on_a_fast_clock_runs_out_on_time(
    bell: Bell, skew: Any
) -> None:
    run = start(samples.waiter, {})
    bell.drain()
    skew(3600.0)  # an hour fast
    clock.refresh()  # its heartbeat measured the offset
    until = leases.lease_until()
    Run.objects.filter(pk=run.pk).update(
        status="running", lease_owner="dead:1", lease_expires_at=until
    )
    skew(0.0)
    # Not an hour from now: a lease's time from now.
    left = (Run.objects.get(pk=run.pk).lease_expires_at - db_now()).total_seconds()
    assert left < leases.lease_seconds() + 0.5


def test_a_process_that_never_held_a_lease_is_on_the_databases_clock_too(skew: Any) -> None:
    """Found by review: only the heartbeat and the sweep measured, so a process that only
    delivered outbox rows stayed on the host's clock, and took over a measured process's live
    claim (the message was sent twice)."""
    skew(-5.0)  # nothing measured yet in this process
    assert abs((clock.now() - db_now()).total_seconds()) < 0.5


def test_measuring_is_not_one_of_the_callers_queries(skew: Any) -> None:
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    skew(3.0)
    with CaptureQueriesContext(conn) as seen:
        clock.now()
    assert clock.offset() != timedelta(0)
    assert len(seen.captured_queries) == 0
