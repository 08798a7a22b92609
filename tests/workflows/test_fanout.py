"""parallel / map: one row per branch, joined in the database, capped per run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start, workflow
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def test_it_writes_one_row_per_branch_and_joins_them(bell: Bell) -> None:
    run = start(samples.fanout, {"items": [1, 2, 3, 4, 5]})
    bell.drain(limit=1)  # the advance: writes the group and its branches, then suspends
    group = Step.objects.get(run=run, kind="parallel", position=1)
    assert (group.status, group.remaining) == ("waiting", 5)
    branches = list(Step.objects.filter(run=run, position=1, branch__gte=0).order_by("branch"))
    assert len(branches) == 5
    assert get_run(run.pk).status == "suspended"
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == {"doubled": [2, 4, 6, 8, 10], "pair": [2, 10]}


def test_the_completing_branch_continues_the_run_without_a_doorbell(bell: Bell) -> None:
    run = start(samples.fanout, {"items": [1, 2, 3]})
    bell.drain()
    advances = [m for m in bell.sent if m[0] == "advance"]
    # Only the start rings: the branch that joins each group took the run's lease in the same
    # commit and advanced it in its own thread.
    assert len(advances) == 1
    assert get_run(run.pk).status == "succeeded"


def test_a_completing_branch_rings_once_when_it_cannot_take_the_run(bell: Bell) -> None:
    from workflows.core.executor import _run_claimed, claim_step

    run = start(samples.fanout, {"items": [1, 2, 3]})
    bell.drain(limit=1)
    bell.messages.clear()
    branches = list(Step.objects.filter(run=run, position=1, branch__gte=0).order_by("branch"))
    for b in branches[:-1]:
        row = claim_step(b.pk, "w")
        assert row is not None and _run_claimed(row, "w", []) is None
    # Someone holds the run (its advancing worker has not suspended yet, say).
    Run.objects.filter(pk=run.pk).update(
        lease_owner="other", lease_expires_at=timezone.now() + timedelta(seconds=60)
    )
    row = claim_step(branches[-1].pk, "w")
    woke: list[Run] = []
    assert row is not None and _run_claimed(row, "w", woke) is None
    assert woke == []
    assert [m[0] for m in bell.messages] == ["advance"]
    assert get_run(run.pk).wake_requested_at is not None
    assert Step.objects.get(run=run, position=1, branch=-1).status == "succeeded"


def test_the_parallelism_cap_holds_extra_branches_until_others_finish(bell: Bell) -> None:
    run = start(samples.fanout, {"items": list(range(8))})  # max_parallel=3
    bell.drain(limit=1)
    rows = Step.objects.filter(run=run, position=1, branch__gte=0)
    assert rows.filter(held=False).count() == 3
    assert rows.filter(held=True).count() == 5
    dispatched = [m for m in bell.sent if m[0] == "step"]
    assert len(dispatched) == 3
    bell.drain()
    assert get_run(run.pk).output["doubled"] == [0, 2, 4, 6, 8, 10, 12, 14]


def test_an_empty_map_returns_an_empty_list(bell: Bell) -> None:
    run = start(samples.fanout, {"items": []})
    bell.drain()
    assert get_run(run.pk).output == {"doubled": [], "pair": [2, 10]}


REPLAYS: list[int] = []


@workflow(name="test.fanout_woken", max_parallel=5)
def woken_during_fan_out(ctx: Any, n: int = 3) -> list[int]:
    REPLAYS.append(1)
    if len(REPLAYS) == 1:  # something wakes the run while this first replay runs
        Run.objects.filter(pk=ctx.run_id).update(wake_requested_at=timezone.now())
    return ctx.map(samples.double, list(range(n)))


def test_the_fan_out_parks_its_run_in_its_own_commit_unless_it_was_woken(bell: Bell) -> None:
    REPLAYS.clear()
    run = start(woken_during_fan_out, {"n": 3})
    bell.drain(limit=1)
    # Woken mid-replay: not parked with the fan-out; it let go and replayed once more, which
    # found the group waiting and parked.
    assert len(REPLAYS) == 2
    fresh = get_run(run.pk)
    assert (fresh.status, fresh.lease_owner, fresh.wake_requested_at) == ("suspended", "", None)
    assert Step.objects.filter(run=run, position=1, branch__gte=0).count() == 3
    assert len([m for m in bell.sent if m[0] == "step"]) == 3  # each branch rung once
    bell.drain()
    assert get_run(run.pk).output == [0, 2, 4]
