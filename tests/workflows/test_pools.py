"""Pools: global concurrency and rate limits enforced through the database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start
from workflows.core.pools import clear_cache
from workflows.core.pools import try_acquire as _try_acquire
from workflows.models import Pool, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def try_acquire(pool: str, now: object) -> object:
    with transaction.atomic():
        return _try_acquire(pool, now)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fresh_pool_cache() -> None:
    clear_cache()


def test_a_full_pool_keeps_steps_pending_in_order_and_hands_slots_over(bell: Bell) -> None:
    Pool.objects.create(name="limited", max_concurrency=2)
    run = start(samples.limited, {"n": 6})
    bell.drain(limit=1)
    # Pretend two other workers hold both slots right now.
    first, second = Step.objects.filter(run=run, branch__gte=0).order_by("branch")[:2]
    Step.objects.filter(pk__in=[first.pk, second.pk]).update(
        status="running",
        lease_owner="other",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
        attempt=1,
    )
    bell.drain()
    waiting = Step.objects.filter(run=run, status="pending")
    assert waiting.count() == 4  # nothing over the limit ran, nothing failed
    assert not Step.objects.filter(run=run, status="failed").exists()
    # The "other" workers finish: each hands its slot to the oldest waiting step.
    from workflows.core.executor import _run_claimed, complete_step
    from workflows.core.usage import StepScope

    first.refresh_from_db()
    oldest = list(waiting.order_by("id").values_list("pk", flat=True))
    handed = complete_step(first, "other", 0, None, StepScope(first.pk, run.pk, 1), None)
    assert handed is not None
    assert (handed.pk, handed.status, handed.lease_owner) == (oldest[0], "running", "other")
    # The worker runs the handed-over step, then keeps taking the next waiting one.
    executed = 0
    while handed is not None:
        executed += 1
        handed = _run_claimed(handed, "other")
    assert executed == 4
    assert (
        list(Step.objects.filter(pk__in=oldest).order_by("started_at").values_list("pk", flat=True))
        == oldest
    )  # in order
    second.refresh_from_db()
    assert complete_step(second, "other", 1, None, StepScope(second.pk, run.pk, 1), None) is None
    assert get_run(run.pk).status == "suspended"
    bell.settle()
    assert get_run(run.pk).output == [0, 1, 2, 3, 4, 5]


def test_expired_leases_do_not_hold_slots(bell: Bell) -> None:
    Pool.objects.create(name="limited", max_concurrency=1)
    run = start(samples.limited, {"n": 1})
    bell.drain(limit=1)
    Step.objects.filter(run=run, branch=0).update(
        status="running", lease_owner="dead", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert try_acquire("limited", timezone.now()) is True


def test_rate_limit_defers_steps_to_the_next_window(bell: Bell) -> None:
    Pool.objects.create(name="limited", rate_limit=2, rate_period=3600)
    now = timezone.now()
    assert try_acquire("limited", now) is True
    assert try_acquire("limited", now) is True
    later = try_acquire("limited", now)
    assert later == now + timedelta(seconds=3600)
    assert try_acquire("limited", now + timedelta(seconds=3601)) is True


def test_an_unlimited_pool_needs_no_lock(bell: Bell) -> None:
    assert try_acquire("default", timezone.now()) is True


def test_fan_out_reserves_free_slots_and_rings_only_for_them(bell: Bell) -> None:
    Pool.objects.create(name="limited", max_concurrency=2)
    run = start(samples.limited, {"n": 5})
    bell.drain(limit=1)
    rows = Step.objects.filter(run=run, branch__gte=0).order_by("branch")
    assert [r.status for r in rows] == ["running", "running", "pending", "pending", "pending"]
    assert [m for m in bell.sent if m[0] == "step"] == [
        ("step", (rows[0].pk,)),
        ("step", (rows[1].pk,)),
    ]
    bell.settle()
    assert get_run(run.pk).output == [0, 1, 2, 3, 4]
    assert all(r.attempt == 1 for r in Step.objects.filter(run=run, branch__gte=0))


def test_a_reservation_whose_doorbell_was_lost_expires_without_counting(bell: Bell) -> None:
    from workflows.core.sweeper import sweep

    Pool.objects.create(name="limited", max_concurrency=1)
    run = start(samples.limited, {"n": 1})
    bell.drain(limit=1)
    bell.lose_all()
    Step.objects.filter(run=run, branch=0).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert sweep()["steps_reclaimed"] == 1
    row = Step.objects.get(run=run, branch=0)
    assert (row.status, row.attempt, row.error) == ("pending", 0, None)
    bell.settle()
    row.refresh_from_db()
    assert (row.status, row.attempt) == ("succeeded", 1)


def test_reserve_counts_only_the_pools_running_steps_with_a_live_lease(bell: Bell) -> None:
    """The fan-out's reservation: free slots = max_concurrency minus this pool's running
    steps whose lease is live (pending steps, expired leases and other pools do not count),
    never more than wanted; nothing for a pool without a concurrency limit."""
    from workflows.core.models import Run
    from workflows.core.pools import RESERVED, reserve

    Pool.objects.create(name="limited", max_concurrency=5)
    Pool.objects.create(name="other", max_concurrency=5)
    Pool.objects.create(name="free")
    now = timezone.now()
    run = Run.objects.create(workflow="pools.reserve", status="suspended")
    rows = [
        ("limited", "running", "w", now + timedelta(seconds=30)),  # counts
        ("limited", "running", RESERVED, now + timedelta(seconds=5)),  # counts
        ("limited", "running", "dead", now - timedelta(seconds=1)),  # lease expired
        ("limited", "pending", "", None),
        ("other", "running", "w", now + timedelta(seconds=30)),
    ]
    for branch, (pool, status, owner, lease) in enumerate(rows):
        Step.objects.create(
            run=run,
            position=1,
            branch=branch,
            kind="branch",
            name="b",
            pool=pool,
            status=status,
            lease_owner=owner,
            lease_expires_at=lease,
        )
    with transaction.atomic():
        assert reserve("limited", 10, now) == 3
        assert reserve("limited", 2, now) == 2
        assert reserve("other", 10, now) == 4
        assert reserve("free", 10, now) == 0
    Pool.objects.filter(name="limited").update(max_concurrency=2)
    clear_cache()
    with transaction.atomic():
        assert reserve("limited", 10, now) == 0
