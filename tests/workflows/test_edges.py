"""Edges found by the tenth session's review: each ends in a clear, recorded outcome, never a
run wedged active, a lease renewed forever or a completion lost.

- a branch re-run by ``restart(only_failed_branches=True)`` keeps its undo, and checks the
  budget the restart sets;
- a BaseException that is not an Exception: from a branch's body (a lost worker: its lease
  runs out), from the workflow's own code (the run fails), from an inline step (a lost worker,
  as before);
- a handler that swallows the engine's suspension or budget stop;
- step errors and usage the journal cannot store as they are.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import DataError
from django.test import override_settings
from django.utils import timezone

from tests.sample_workflows import costly
from tests.support import Bell
from workflows import (
    NonRetryableError,
    RetryPolicy,
    get_run,
    record_usage,
    restart,
    send_event,
    start,
    step,
    workflow,
)
from workflows.core import clock, executor, leases, transitions
from workflows.core.calls import storable_text
from workflows.core.errors import InvalidStateError
from workflows.core.sweeper import sweep
from workflows.models import Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

LOG: list[str] = []


@pytest.fixture(autouse=True)
def _clean_log() -> None:
    LOG.clear()


# --- restart(only_failed_branches=True) ---------------------------------------------------------


@step
def unbook(name: str, result: str) -> None:
    LOG.append(f"undo:{name}")


@step(compensate=unbook)
def book(name: str) -> str:
    if os.environ.get("EDGES_BOOK_FAILS"):
        raise NonRetryableError("booking system down")
    LOG.append(f"do:{name}")
    return f"ref-{name}"


@step
def plain(x: int) -> int:
    return x


@step
def later() -> None:
    if os.environ.get("EDGES_LATER_FAILS"):
        raise NonRetryableError("a later step fails")


@workflow(name="edges.saga")
def saga(ctx: Any) -> Any:
    booked = ctx.parallel([ctx.call(plain, 1), ctx.call(book, "hotel")])
    ctx.run(later)
    return booked


def test_a_branch_re_run_alone_keeps_its_undo(bell: Bell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGES_BOOK_FAILS", "1")
    run = start(saga, {})
    bell.settle()
    assert get_run(run.pk).status == "failed" and LOG == []
    before = Step.objects.get(run=run, kind="branch", branch=1)
    monkeypatch.delenv("EDGES_BOOK_FAILS")
    monkeypatch.setenv("EDGES_LATER_FAILS", "1")
    restart(run.pk, only_failed_branches=True)
    bell.settle()
    again = Step.objects.get(run=run, kind="branch", branch=1, superseded=False)
    assert again.undo == before.undo != ""
    # The later step failed: the hotel booked by the re-run branch is unbooked.
    assert LOG == ["do:hotel", "undo:hotel"]
    assert get_run(run.pk).status == "failed"


@step
def picky(x: int) -> int:
    if os.environ.get("EDGES_REFUSE"):
        raise NonRetryableError(f"refused {x}")
    record_usage(cost=0.4)
    return x


@workflow(name="edges.picky", max_parallel=10)
def pickies(ctx: Any, n: int = 10) -> Any:
    return ctx.map(picky, list(range(n)))


def test_a_budget_set_by_the_restart_holds_for_the_branches_it_re_runs(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGES_REFUSE", "1")
    run = start(pickies, {"n": 10})  # no budget
    bell.settle()
    assert get_run(run.pk).status == "failed"
    monkeypatch.delenv("EDGES_REFUSE")
    restart(run.pk, only_failed_branches=True, max_cost=Decimal("0.50"))
    bell.settle()
    run = get_run(run.pk)
    ran = Step.objects.filter(run=run, kind="branch", superseded=False, status="succeeded")
    # $0.40 a branch against $0.50: the branches in flight reserve their share, so no more
    # than two start before the budget stops the rest (as on a first run with that budget).
    assert run.status == "failed" and run.error["type"] == "BudgetExceeded"
    assert 1 <= ran.count() <= 2 and run.cost <= Decimal("0.80")
    # Lifting the budget again lifts the check.
    restart(run.pk, only_failed_branches=True, max_cost=Decimal("100"))
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


# --- BaseExceptions that are not Exceptions -------------------------------------------------------


@step
def cancelled(x: int) -> int:
    raise asyncio.CancelledError("the step's event loop was cancelled")


@workflow(name="edges.cancelled_branch")
def cancelled_branch(ctx: Any) -> Any:
    return ctx.map(cancelled, [1])


@override_settings(SLUICE_LEASE_SECONDS=0.6, SLUICE_DOORBELL_GRACE_SECONDS=0.2)
def test_a_branch_interrupted_by_a_base_exception_is_a_lost_worker(bell: Bell) -> None:
    """Its worker survives (a thread pool does): the lease must still run out, so that the
    sweep counts the attempt and, past the last, fails the step, and the run goes on."""
    run = start(cancelled_branch, {})
    with pytest.raises(asyncio.CancelledError):
        bell.drain()
    branch = Step.objects.get(run=run, kind="branch")
    assert branch.status == "running" and branch.pk not in leases._held
    deadline = time.monotonic() + 30
    while get_run(run.pk).status not in ("failed", "succeeded") and time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            bell.settle(rounds=3)
        except asyncio.CancelledError:
            pass
    branch.refresh_from_db()
    assert branch.status == "failed" and branch.error["type"] == "WorkerLost"
    assert branch.attempt == branch.max_attempts
    assert get_run(run.pk).status == "failed"


@step
def one(x: int) -> int:
    LOG.append(f"one:{x}")
    return x


@workflow(name="edges.handler_cancelled")
def handler_cancelled(ctx: Any, first: bool = True) -> Any:
    if first:
        ctx.run(one, 1)
    raise asyncio.CancelledError("the handler's own code was cancelled")


@pytest.mark.parametrize("first", [False, True])
def test_a_base_exception_from_the_workflows_own_code_fails_the_run(
    bell: Bell, first: bool
) -> None:
    """It would come again on every replay: before, the run was let go and replayed forever
    (or its step re-run until blamed on a lost worker)."""
    run = start(handler_cancelled, {"first": first})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "CancelledError"
    assert "cancelled" in run.error["message"]
    if first:  # the step that ran is journaled once, succeeded
        assert LOG == ["one:1"]
        assert list(Step.objects.filter(run=run).values_list("name", "status")) == [
            ("one", "succeeded")
        ]


@step
def exits() -> None:
    LOG.append("exits")
    raise SystemExit("the worker is stopping")


@workflow(name="edges.inline_exit")
def inline_exit(ctx: Any) -> Any:
    return ctx.run(exits)


def test_an_inline_step_interrupted_is_still_a_lost_worker(bell: Bell) -> None:
    """The handler's own BaseExceptions fail the run; a step's (run inline) stays a lost
    worker: the run is let go, and the attempt counts."""
    run = start(inline_exit, {})
    with pytest.raises(SystemExit):
        bell.drain()
    fresh = get_run(run.pk)
    assert fresh.status == "running" and fresh.lease_owner == ""
    assert Step.objects.get(run=run).attempt == 1


# --- a handler that swallows the engine's control flow ------------------------------------------


@workflow(name="edges.swallow_wait")
def swallow_wait(ctx: Any) -> Any:
    try:
        event = ctx.wait_for_event("approved", timeout=3600)
    except BaseException:  # noqa: BLE001  (what a careless handler does)
        event = None
    return {"approved": event}


@workflow(name="edges.swallow_budget")
def swallow_budget(ctx: Any, n: int = 5) -> Any:
    value = 0
    for _ in range(n):
        try:
            value = ctx.run(costly, value)
        except BaseException:  # noqa: BLE001
            pass
    return value


def test_a_swallowed_suspension_still_waits(bell: Bell) -> None:
    run = start(swallow_wait, {})
    bell.settle()
    assert get_run(run.pk).status == "suspended"
    assert Step.objects.get(run=run).status == "waiting"
    send_event(run.pk, "approved", {"ok": True})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded" and run.output == {"approved": {"ok": True}}


def test_a_swallowed_budget_stop_still_stops_the_run(bell: Bell) -> None:
    run = start(swallow_budget, {"n": 5}, max_cost=Decimal("1.0"))
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["type"] == "BudgetExceeded"
    assert run.cost == Decimal("1.2")  # three steps: the third crossed the budget


# --- what the journal cannot store as it is ---------------------------------------------------


def test_storable_text_escapes_what_jsonb_refuses() -> None:
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text("x\ud800y") == "x\\ud800y"
    assert storable_text("plain é ✓") == "plain é ✓"


class RawAnswerError(NonRetryableError):
    def __init__(self, message: str, raw_text: str) -> None:
        super().__init__(message)
        self.raw_text = raw_text


@step
def garbled(x: int) -> int:
    LOG.append("garbled")
    raise RawAnswerError("unparsable \x00 answer \ud800", raw_text='{"a": \x00}')


@workflow(name="edges.garbled_inline")
def garbled_inline(ctx: Any) -> Any:
    return ctx.run(garbled, 1)


@workflow(name="edges.garbled_branch")
def garbled_branch(ctx: Any) -> Any:
    return ctx.map(garbled, [1])


@pytest.mark.parametrize("flow", [garbled_inline, garbled_branch])
def test_a_step_error_with_a_nul_or_lone_surrogate_is_recorded_escaped(
    bell: Bell, flow: Any
) -> None:
    """Before, PostgreSQL refused the error (a NUL in jsonb): an inline step's row stayed
    running under the run's DataError, a branch ran three times and was blamed on a lost
    worker."""
    run = start(flow, {})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert LOG == ["garbled"]  # non-retryable: run once
    row = Step.objects.get(run=run, name="garbled")
    assert row.status == "failed" and row.error["type"] == "RawAnswerError"
    assert row.error["message"] == "unparsable \\x00 answer \\ud800"
    assert row.error["raw_text"] == '{"a": \\x00}'


@step
def priced(kind: str) -> str:
    LOG.append(kind)
    if kind == "decimal":
        record_usage(cost=Decimal("0.01"), unit_price=Decimal("0.002"))
    elif kind == "nan":
        record_usage(cost=float("nan"))
    elif kind == "object":
        record_usage(cost=0.01, client=object())
    return kind


@workflow(name="edges.priced")
def prices(ctx: Any, kind: str) -> Any:
    return ctx.map(priced, [kind])


def test_usage_is_checked_where_it_is_recorded(bell: Bell) -> None:
    run = start(prices, {"kind": "decimal"})
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    row = Step.objects.get(run=run, name="priced")
    assert row.usage == {"unit_price": "0.002"} and row.cost == Decimal("0.01")
    for kind, message in (("nan", "finite"), ("object", "JSON")):
        LOG.clear()
        run = start(prices, {"kind": kind})
        bell.settle()
        run = get_run(run.pk)
        row = Step.objects.get(run=run, name="priced")
        assert run.status == "failed" and LOG == [kind]  # one attempt: a TypeError
        assert row.status == "failed" and row.error["type"] == "TypeError"
        assert message in row.error["message"]


def test_an_outcome_the_database_refuses_fails_the_step_instead_of_re_running_it(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the value the database refuses, the step is recorded failed with why, once,
    and the run's failure path goes on."""
    real = transitions.finish
    refused: list[str] = []

    def finish(row: Step, owner: str, fields: dict[str, Any], **kw: Any) -> Any:
        if fields.get("status") == "succeeded" and not refused:
            refused.append(row.name)
            raise DataError("unsupported Unicode escape sequence")
        return real(row, owner, fields, **kw)

    monkeypatch.setattr(executor.transitions, "finish", finish)
    run = start(prices, {"kind": "plain"})
    bell.settle()
    run = get_run(run.pk)
    row = Step.objects.get(run=run, name="priced")
    assert refused == ["priced"] and LOG == ["plain"]
    assert row.status == "failed" and row.error["type"] == "DataError"
    assert row.error["outcome_not_stored"] is True
    assert row.finished_at is not None and row.finished_at <= clock.now()  # the engine's clock
    assert run.status == "failed"


# --- a run pruned while an operator acts on it ------------------------------------------------


@pytest.mark.parametrize("act", ["cancel", "restart", "fork"])
def test_a_run_pruned_while_waiting_for_its_lock_is_not_found(
    bell: Bell, monkeypatch: pytest.MonkeyPatch, act: str
) -> None:
    """The prune held the run's row; the action read the run, then waited, then found nothing:
    Run.DoesNotExist escaped as a 500 where RunNotFoundError is answered."""
    from django.db import connection

    from workflows import RunNotFoundError, cancel, fork
    from workflows.core import forking, services
    from workflows.models import Run

    if act == "fork" and not connection.features.has_select_for_update:
        pytest.skip("SQLite's fork holds the write lock from its first statement: no such wait")
    run = start(saga, {}) if act == "cancel" else start(plain_flow, {})
    bell.settle()
    real = services.get_run

    def read_then_pruned(run_id: Any) -> Any:
        found = real(run_id)
        Run.objects.filter(pk=run_id).delete()  # the prune commits now
        return found

    monkeypatch.setattr(services, "get_run", read_then_pruned)
    monkeypatch.setattr(forking, "get_run", read_then_pruned)
    with pytest.raises(RunNotFoundError):
        if act == "cancel":
            cancel(run.pk, "stop")
        elif act == "restart":
            restart(run.pk, from_step=1)
        else:
            fork(run.pk, from_step=1)


def test_retrying_the_failed_step_of_a_run_pruned_meanwhile_says_so(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workflows import operations
    from workflows.models import Run

    monkeypatch.setenv("EDGES_BOOK_FAILS", "1")
    run = start(saga, {})
    bell.settle()
    real = operations.failed_position

    def read_then_pruned(run_id: Any) -> Any:
        position = real(run_id)
        Run.objects.filter(pk=run_id).delete()
        return position

    monkeypatch.setattr(operations, "failed_position", read_then_pruned)
    outcome = operations.retry_failed_step(run.pk, "ops", "")
    assert not outcome.ok and "no run with id" in outcome.message


@workflow(name="edges.plain")
def plain_flow(ctx: Any) -> Any:
    return ctx.run(plain, 1)


# --- the embedded broker ---------------------------------------------------------------------


def test_the_embedded_broker_skips_a_message_file_it_cannot_read(tmp_path: Any) -> None:
    """kombu's filesystem transport writes a message into a file already named ``.msg``, so a
    worker could read it empty: the JSONDecodeError stopped the worker, and ``make run`` with it
    (kombu #1551). Messages are now renamed into place whole, and an unreadable one is skipped."""
    from kombu import Connection

    from config import fsbroker

    folder = tmp_path / "queue"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),
    }
    with Connection("filesystem://", transport_options=options) as conn:
        assert conn.transport_cls == "filesystem"
        assert isinstance(conn.transport, fsbroker.Transport)
        (folder / "0_half-written.edges.msg").write_bytes(b"")
        queue = conn.SimpleQueue("edges")
        queue.put({"ring": 1})
        assert not list(folder.glob("*.part"))  # written whole, then renamed
        message = queue.get(timeout=2)
        assert message.payload == {"ring": 1}
        message.ack()
        queue.close()
    assert not list(folder.glob("*.msg"))


def test_a_message_the_disk_refused_leaves_no_part_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: with the broker's disk full, each failed write left an empty .part
    behind (the beat's sweeps alone made thousands an hour, each listed at every poll)."""
    from kombu import Connection

    from config import fsbroker

    folder = tmp_path / "queue"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(tmp_path / "control"),
    }

    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    with Connection("filesystem://", transport_options=options) as conn:
        channel = conn.default_channel
        assert isinstance(channel, fsbroker.Channel)
        monkeypatch.setattr(fsbroker.os, "replace", full)
        with pytest.raises(Exception, match="Cannot add file"):
            channel._put("edges", {"ring": 1})
    assert not list(folder.glob("*.part"))


@step(retry=RetryPolicy(max_attempts=1))
def flaky(x: int) -> int:
    if os.environ.get("EDGES_FLAKY_FAILS"):
        raise NonRetryableError("flaky")
    return x


@workflow(name="edges.flaky_map")
def flaky_map(ctx: Any) -> Any:
    return ctx.parallel([ctx.call(plain, 1), ctx.call(flaky, 2)])


def test_a_failed_branch_runs_again_on_the_step_as_deployed_now(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: "retry failed step" after a fix deploy copied the failed row's pool
    and attempts, so the fix's new pool and retry policy were ignored."""
    monkeypatch.setenv("EDGES_FLAKY_FAILS", "1")
    run = start(flaky_map, {})
    bell.settle()
    assert get_run(run.pk).status == "failed"
    # The fix deploy: another pool, more attempts.
    monkeypatch.setattr(flaky, "pool", "fast")
    monkeypatch.setattr(flaky, "retry", RetryPolicy(max_attempts=7))
    monkeypatch.delenv("EDGES_FLAKY_FAILS")
    restart(run.pk, only_failed_branches=True)
    again = Step.objects.get(run=run, kind="branch", branch=1, superseded=False)
    assert (again.pool, again.max_attempts) == ("fast", 7)
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


def test_retrying_branches_whose_step_moved_is_refused_saying_what_to_do(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGES_FLAKY_FAILS", "1")
    run = start(flaky_map, {})
    bell.settle()
    Step.objects.filter(run=run, branch=1).update(target="tests.workflows.moved_away.flaky")
    with pytest.raises(InvalidStateError, match="no longer at tests.workflows.moved_away.flaky"):
        restart(run.pk, only_failed_branches=True)
    assert get_run(run.pk).status == "failed"  # nothing changed
    assert not Step.objects.filter(run=run, superseded=True).exists()


PEEKED: list[Any] = []


@step(retry=RetryPolicy(max_attempts=2))
def peek(tag: str) -> str:
    """Fails its first attempt; the second reads its own row while it runs."""
    row = Step.objects.filter(name="peek", status="running", args__icontains=tag).first()
    PEEKED.append((tag, row.attempt, row.finished_at, row.started_at) if row else None)
    if row is not None and row.attempt == 1:
        raise ConnectionError("first attempt fails")
    return tag


@workflow(name="edges.peek")
def peek_twice(ctx: Any) -> Any:
    return [ctx.run(peek, "inline"), ctx.parallel([ctx.call(peek, "branch")])]


def test_a_running_attempt_has_no_end_of_its_own_yet(bell: Bell) -> None:
    """Found by review: the next attempt kept the previous one's finished_at, so the API gave a
    negative duration_ms and the timeline "0 ms" instead of "… so far"."""
    PEEKED.clear()
    run = start(peek_twice, {})
    for _ in range(3):
        bell.settle()
        Step.objects.filter(run=run, status="retrying").update(
            wake_at=timezone.now() - timedelta(seconds=1)
        )
        sweep()
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    seconds = [p for p in PEEKED if p is not None and p[1] == 2]
    assert {p[0] for p in seconds} == {"inline", "branch"}
    assert all(finished is None for _, _, finished, _ in seconds), seconds
