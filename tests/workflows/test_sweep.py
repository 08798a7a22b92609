"""The sweep: lost doorbells, expired leases, retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start, workflow
from workflows.core.sweeper import prune, sweep
from workflows.models import Event, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def test_a_lost_start_doorbell_is_rung_again(bell: Bell) -> None:
    run = start(samples.chain, {"n": 2})
    assert bell.lose_all() == 1  # Redis flushed before any worker saw it
    assert sweep()["rung"] == 0  # within the grace period nothing happens
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(seconds=60))
    assert sweep()["rung"] == 1
    bell.drain()
    assert get_run(run.pk).status == "succeeded"


def test_lost_branch_messages_are_rung_again(bell: Bell) -> None:
    run = start(samples.fanout, {"items": [1, 2]})
    bell.drain(limit=1)
    bell.lose_all()
    Step.objects.filter(run=run, status="pending").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )
    assert sweep()["rung"] == 2
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


def test_an_expired_branch_lease_is_reclaimed_and_counted(bell: Bell) -> None:
    run = start(samples.fanout, {"items": [7]})
    bell.drain(limit=1)
    bell.lose_all()
    branch = Step.objects.get(run=run, position=1, branch=0)
    Step.objects.filter(pk=branch.pk).update(
        status="running",
        attempt=1,
        lease_owner="dead:1",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert sweep()["steps_reclaimed"] == 1
    branch.refresh_from_db()
    assert (branch.status, branch.error["type"]) == ("pending", "WorkerLost")
    bell.settle()
    branch.refresh_from_db()
    assert (branch.status, branch.attempt) == ("succeeded", 2)
    assert get_run(run.pk).status == "succeeded"


def test_a_branch_that_keeps_killing_its_worker_fails_after_its_budget(bell: Bell) -> None:
    run = start(samples.fanout, {"items": [7]})
    bell.drain(limit=1)
    bell.lose_all()
    branch = Step.objects.get(run=run, position=1, branch=0)
    Step.objects.filter(pk=branch.pk).update(
        status="running",
        attempt=branch.max_attempts,
        lease_owner="dead:1",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    sweep()
    bell.settle()
    branch.refresh_from_db()
    assert branch.status == "failed"
    assert "attempt budget exhausted" in branch.error["message"]
    assert get_run(run.pk).status == "failed"


def test_the_sweep_is_idempotent(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1})
    bell.lose_all()
    Run.objects.filter(pk=run.pk).update(wake_requested_at=timezone.now() - timedelta(seconds=60))
    assert sweep()["rung"] == 1
    assert sweep()["rung"] == 0  # rung again only after another grace period


@override_settings(SLUICE_RETENTION_DAYS=1, SLUICE_PRUNE_BATCH=2)
def test_retention_prunes_old_finished_runs_with_their_journal(bell: Bell) -> None:
    old = [start(samples.waiter, {}) for _ in range(3)]
    young = start(samples.chain, {"n": 1})
    live = start(samples.waiter, {})
    bell.drain()
    for run in old:
        from workflows import send_event

        send_event(run.pk, "approved", {})
    bell.drain()
    Run.objects.filter(pk__in=[r.pk for r in old]).update(
        finished_at=timezone.now() - timedelta(days=2)
    )
    assert prune() == 3
    assert set(Run.objects.values_list("pk", flat=True)) == {young.pk, live.pk}
    assert not Step.objects.filter(run_id__in=[r.pk for r in old]).exists()
    assert not Event.objects.filter(run_id__in=[r.pk for r in old]).exists()


@pytest.mark.parametrize("duty", [0.5, 0.25, 1.0])
def test_the_prune_rests_between_batches_for_its_duty_cycle(
    bell: Bell, monkeypatch: pytest.MonkeyPatch, duty: float
) -> None:
    """After a batch that took t seconds the prune sleeps t × (1 / duty − 1): as long as it
    worked at 0.5, three times as long at 0.25, never at 1."""
    from workflows.core import sweeper

    runs = [start(samples.chain, {"n": 1}) for _ in range(5)]
    bell.drain()
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(
        finished_at=timezone.now() - timedelta(days=2)
    )
    clock = iter(float(i) for i in range(1000))  # each batch "takes" one second
    monkeypatch.setattr(sweeper, "_clock", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr(sweeper, "_rest", slept.append)
    with override_settings(SLUICE_RETENTION_DAYS=1, SLUICE_PRUNE_BATCH=2, SLUICE_PRUNE_DUTY=duty):
        assert prune() == 5
    rest = 1 / duty - 1
    assert slept == ([rest] * 3 if rest else [])  # batches of 2, 2, 1; none after the empty one


def test_a_flushed_burst_is_rung_again_in_chunks(bell: Bell) -> None:
    runs = [start(samples.chain, {"n": 1}) for _ in range(120)]
    bell.lose_all()
    Run.objects.update(wake_requested_at=timezone.now() - timedelta(seconds=60))
    assert sweep()["rung"] == 120
    assert [m[0] for m in bell.messages] == ["advance_many"] * 3  # 50 + 50 + 20
    bell.drain()
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="succeeded").count() == 120


# --- found in the tenth session's review ----------------------------------------------------------


@workflow(name="test.big_child")
def big_child(ctx: Any) -> str:
    return ctx.run(samples.big, 100_000)  # stored out of row: the child's blob


@workflow(name="test.parent_of_big_child")
def parent_of_big_child(ctx: Any) -> int:
    value = ctx.run_workflow("test.big_child", {})
    ctx.sleep(timedelta(days=40))
    return len(value)


@override_settings(SLUICE_RETENTION_DAYS=30)
def test_a_child_run_is_pruned_only_with_its_parent(bell: Bell) -> None:
    """The parent's journal refers to the child's output, which the child owns: pruning the
    child alone failed the parent's next replay (ForeignBlobError)."""
    run = start(parent_of_big_child, {})
    bell.settle()
    child = Run.objects.get(parent_id=run.pk)
    Run.objects.filter(pk=child.pk).update(finished_at=timezone.now() - timedelta(days=31))
    assert prune() == 0  # its parent is still going
    Step.objects.filter(run=run, kind="sleep").update(wake_at=timezone.now() - timedelta(seconds=1))
    sweep()
    bell.settle()
    assert get_run(run.pk).status == "succeeded" and get_run(run.pk).output == 100_000
    # Once the parent is past retention too, both go.
    Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(days=31))
    assert prune() == 2
    assert not Run.objects.filter(pk__in=[run.pk, child.pk]).exists()


@pytest.mark.parametrize(
    ("days", "batch", "pruned"),
    [
        (1e9, 500, 0),  # "keep forever": it overflowed the date and raised every hour
        (float("inf"), 500, 0),
        ("soon", 500, 0),  # not a number: a typo keeps everything
        (-1, 500, 0),
        (1, 0, 1),  # 0 pruned nothing, silently: at least one a batch
        (1, -1, 1),
    ],
)
def test_odd_retention_settings_keep_or_prune_but_never_raise(
    bell: Bell, settings: Any, days: Any, batch: int, pruned: int
) -> None:
    from workflows.models import Outbox

    run = start(samples.chain, {"n": 1})
    bell.drain()
    Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(days=365 * 30))
    settings.SLUICE_RETENTION_DAYS = days
    settings.SLUICE_PRUNE_BATCH = batch
    settings.SLUICE_OUTBOX_RETENTION_DAYS = 1
    Outbox.objects.create(
        kind="webhook",
        key="old",
        status="delivered",
        delivered_at=timezone.now() - timedelta(days=10),
    )
    assert prune() == pruned
    assert Run.objects.filter(pk=run.pk).exists() == (pruned == 0)
    assert not Outbox.objects.filter(key="old").exists()  # the outbox's own retention still ran


@override_settings(SLUICE_RETENTION_DAYS=1)
def test_a_parent_is_kept_while_a_child_of_it_is_still_going(bell: Bell) -> None:
    """A child still compensating after its parent failed: pruning the parent set the child's
    parent_id to NULL, and the child could then be restarted on its own."""
    parent = start(samples.chain, {"n": 1})
    child = start(samples.chain, {"n": 1})
    bell.settle()
    old = timezone.now() - timedelta(days=2)
    Run.objects.filter(pk=parent.pk).update(status="failed", finished_at=old)
    Run.objects.filter(pk=child.pk).update(parent_id=parent.pk, status="compensating")
    assert prune() == 0
    assert Run.objects.get(pk=child.pk).parent_id == parent.pk
    Run.objects.filter(pk=child.pk).update(status="failed", finished_at=old)
    assert prune() == 2


@override_settings(SLUICE_RETENTION_DAYS=0.25)
def test_a_run_with_a_side_effect_still_to_leave_is_kept(bell: Bell) -> None:
    """A webhook retries for a day; under a shorter retention its run, and with it the
    delivery's record, was pruned while the outbox still had it to send."""
    from workflows.core.models import Outbox
    from workflows.core.services import enqueue_outbox

    run = start(samples.chain, {"n": 1})
    bell.settle()
    Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(hours=12))
    row = enqueue_outbox("test.kind", "k-1", {}, run=get_run(run.pk))
    assert prune() == 0
    Outbox.objects.filter(pk=row.pk).update(status="delivered", delivered_at=timezone.now())
    assert prune() == 1
    assert Outbox.objects.filter(pk=row.pk, run__isnull=True).exists()
