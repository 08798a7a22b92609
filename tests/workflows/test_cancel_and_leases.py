"""Edges found by the eleventh session's review of operator actions racing the workers.

- a run that a batch's branch took over (its group closed) keeps its lease renewed while its
  next inline step runs: before, the heartbeat renewed the thread's owner, not the job's, so
  the sweep took the run away mid-step and the step ran twice;
- canceling a parent leaves a child that is already undoing its steps to finish its undos;
- a cancel racing a branch's success undoes that branch, or stops it before it runs: never a
  canceled run with a succeeded, undoable step left booked.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tests.support import Bell
from tests.workflows.saga_workflows import LOG, book, fail
from workflows import RetryPolicy, cancel, get_run, start, step, workflow
from workflows.core import doorbell, executor, leases, pools, undos
from workflows.models import Pool, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

SEEN: list[tuple[str, bool]] = []


@pytest.fixture(autouse=True)
def _clean() -> None:
    LOG.clear()
    SEEN.clear()


# --- the lease of a run taken over by a batch's branch ------------------------------------------


@step(pool="cl-limited")
def limited(x: int) -> int:
    return x


@step
def checks_its_lease() -> str:
    """Inline, after the fan-out: is the run's lease renewed by this process's heartbeat?"""
    run = Run.objects.get(workflow="test.cl_batch_then_inline")
    time.sleep(0.01)
    leases.renew_all()
    after = Run.objects.get(pk=run.pk).lease_expires_at
    assert run.lease_expires_at is not None and after is not None
    SEEN.append((run.lease_owner, after > run.lease_expires_at))
    return "ok"


@workflow(name="test.cl_batch_then_inline")
def batch_then_inline(ctx: Any) -> Any:
    ctx.map(limited, [1, 2, 3])
    return ctx.run(checks_its_lease)


def test_a_run_a_batch_took_over_keeps_its_lease_renewed(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("branches ring in batches on PostgreSQL only")
    batches: list[tuple[list[int], str]] = []
    monkeypatch.setattr(doorbell, "send_batches", batches.extend)
    Pool.objects.create(name="cl-limited", max_concurrency=5)
    pools.clear_cache()
    run = start("test.cl_batch_then_inline", {})
    bell.drain()
    assert len(batches) == 1
    ids, queue = batches[0]
    executor.execute_steps(ids, queue)  # the branch that closes the group takes the run on
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    ((owner, renewed),) = SEEN
    assert ":job:" in owner  # the batch's job owner advanced the run
    assert renewed, "the heartbeat did not renew the run's lease under its owner"


# --- canceling a parent whose child is compensating ---------------------------------------------


@step(retry=RetryPolicy(max_attempts=5, initial_backoff=30, max_backoff=30, jitter=False))
def busy_unbook(name: str, result: str) -> str:
    LOG.append(f"try-undo:{name}")
    if len([e for e in LOG if e == f"try-undo:{name}"]) < 2:
        raise RuntimeError("booking system busy")
    LOG.append(f"undo:{name}")
    return "ok"


@workflow(name="test.cl_child_saga")
def child_saga(ctx: Any) -> None:
    ctx.run(book, "a", compensate=busy_unbook)
    ctx.run(fail, "sold out")


@workflow(name="test.cl_parent")
def parent(ctx: Any) -> Any:
    return ctx.run_workflow("test.cl_child_saga", {})


def test_canceling_a_parent_lets_a_compensating_child_finish_its_undos(bell: Bell) -> None:
    p = start("test.cl_parent", {})
    bell.settle()
    child = Run.objects.get(parent=p)
    assert child.status == "compensating"  # its undo waits out a 30 s backoff
    cancel(p.pk, "operator stops the parent")
    assert get_run(p.pk).status == "canceled"
    child.refresh_from_db()
    assert child.status == "compensating"
    Step.objects.filter(run=child, status="retrying").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )
    bell.settle()
    child.refresh_from_db()
    assert child.status == "failed" and child.error["compensated"] is True
    assert "undo:a" in LOG


def test_canceling_a_compensating_parent_still_stops_its_compensating_children(
    bell: Bell,
) -> None:
    """The operator's way out of a stuck rollback goes down the tree, as before."""
    p = start("test.cl_parent", {})
    bell.settle()
    child = Run.objects.get(parent=p)
    Run.objects.filter(pk=p.pk).update(status="compensating", after_compensation="canceled")
    cancel(p.pk, "stop every undo")
    child.refresh_from_db()
    assert child.status == "canceled" and child.error["not_undone"] == ["book (#1)"]


# --- a cancel racing a branch's success ---------------------------------------------------------


@workflow(name="test.cl_map_saga")
def map_saga(ctx: Any, names: list[str]) -> Any:
    return ctx.map(book, names)


def test_a_branch_finishing_during_a_cancel_is_undone_or_never_runs(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the race needs PostgreSQL's row locks")
    run = start("test.cl_map_saga", {"names": ["a", "b", "c"]})
    kind, args = bell.messages.popleft()
    executor.advance(*args)  # the fan-out is written; no branch has run
    first = Step.objects.get(run=run, branch=0)
    worker: list[threading.Thread] = []
    counted = undos.has_undos

    def branch_finishes_now(run_id: Any) -> bool:
        """A worker runs branch 0 to its end while the cancel is under way."""
        answer = counted(run_id)

        def work() -> None:
            try:
                executor.execute_step(first.pk)
            finally:
                connection.close()

        t = threading.Thread(target=work)
        t.start()
        t.join(timeout=2)  # it waits for the cancel's commit when the cancel holds its row
        worker.append(t)
        return answer

    monkeypatch.setattr(undos, "has_undos", branch_finishes_now)
    cancel(run.pk, "stop")
    monkeypatch.setattr(undos, "has_undos", counted)
    worker[0].join(timeout=10)
    for _ in range(5):
        bell.settle()
        # Due on the engine's clock (the database's): the host's may be a little ahead.
        Step.objects.filter(status="retrying").update(wake_at=timezone.now() - timedelta(seconds=1))
    run = get_run(run.pk)
    assert run.status == "canceled"
    booked = Step.objects.filter(run=run, status="succeeded", superseded=False, branch__gte=0)
    assert LOG.count("do:a") == LOG.count("undo:a"), (LOG, [b.name for b in booked])


# --- a cancel working from a stale copy of a run ------------------------------------------------


@workflow(name="test.cl_child_waits")
def child_waits(ctx: Any) -> None:
    ctx.run(book, "a", compensate=busy_unbook)
    ctx.wait_for_event("go")


@workflow(name="test.cl_parent_waits")
def parent_waits(ctx: Any) -> Any:
    return ctx.run_workflow("test.cl_child_waits", {})


def test_a_cancel_from_a_stale_copy_leaves_a_run_that_moved_on_alone(bell: Bell) -> None:
    """The parent's cancel read its child; the child was canceled on its own meanwhile and is
    undoing its booking. The parent's cancel must not cancel that undo (review finding: it
    did, and the child stayed compensating for ever)."""
    from django.db import transaction

    from workflows.core import services

    p = start("test.cl_parent_waits", {})
    bell.settle()
    stale = Run.objects.get(parent=p)
    assert stale.status == "suspended"
    cancel(stale.pk, "someone cancels the child first")
    bell.settle()
    undo = Step.objects.get(run=stale, kind="compensate")
    assert undo.status == "retrying"
    with transaction.atomic():
        assert services._cancel_locked(stale, "parent canceled") is False
    undo.refresh_from_db()
    assert undo.status == "retrying"
    Step.objects.filter(status="retrying").update(wake_at=timezone.now() - timedelta(seconds=1))
    bell.settle()
    assert get_run(stale.pk).status == "canceled" and "undo:a" in LOG


# --- the budget stop before a retry ends the step -----------------------------------------------


@step(retry=RetryPolicy(max_attempts=3, initial_backoff=30, max_backoff=30, jitter=False))
def paid_and_flaky() -> str:
    from decimal import Decimal

    from workflows import record_usage

    record_usage(cost=Decimal(1))
    raise RuntimeError("the provider had a hiccup")


@workflow(name="test.cl_paid_flaky")
def paid_flaky(ctx: Any) -> str:
    return ctx.run(paid_and_flaky)


def test_a_budget_stop_before_a_retry_fails_the_step_not_only_the_run(bell: Bell) -> None:
    from decimal import Decimal

    run = start("test.cl_paid_flaky", {}, max_cost=Decimal("0.5"))
    bell.settle()
    row = Step.objects.get(run=run)
    assert row.status == "retrying"
    Step.objects.filter(pk=row.pk).update(wake_at=timezone.now() - timedelta(seconds=1))
    bell.settle()
    run = get_run(run.pk)
    row.refresh_from_db()
    assert run.status == "failed" and run.error["type"] == "BudgetExceeded"
    assert row.status == "failed" and row.error["type"] == "BudgetExceeded" and row.attempt == 1
    assert run.cost == 1  # no second paid attempt
