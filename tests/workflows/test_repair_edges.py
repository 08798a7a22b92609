"""Operators repairing runs in odd states, found by the twelfth session's review: a restart of
a run whose code a deploy removed, a retry after a failed undo, a child run restarted on its
own, a new budget below what the run spent, and a parent's cancel in its children's audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

import tests.workflows.saga_workflows  # noqa: F401  (registers the saga pipelines)
from tests.support import Bell
from tests.workflows.saga_workflows import LOG, book, broken_unbook
from workflows import (
    cancel,
    get_run,
    operations,
    record_usage,
    restart,
    send_event,
    start,
    step,
    workflow,
)
from workflows.core import definitions
from workflows.core.audit import Actor
from workflows.core.definitions import unregister_workflow
from workflows.core.errors import InvalidInputError, InvalidStateError
from workflows.core.sweeper import sweep
from workflows.models import Run, RunAudit, Step
from workflows.timeline import generation_costs

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SLUICE_TEST_CALL_LOG", raising=False)
    LOG.clear()
    yield
    LOG.clear()


def settle(bell: Bell) -> None:
    """Drain, and let the sweep fire retry backoffs."""
    for _ in range(30):
        bell.settle()
        states = set(Run.objects.values_list("status", flat=True))
        if not states & {"pending", "running", "compensating"}:
            return
        Step.objects.filter(status="retrying").update(wake_at=timezone.now() - timedelta(1))
        sweep()


@workflow(name="test_repair.gone")
def gone(ctx: Any, names: list[str]) -> str:
    for name in names:
        ctx.run(book, name)
    ctx.wait_for_event("go")
    return "done"


# --- a run whose code a deploy removed --------------------------------------------------------


def test_a_run_whose_pipeline_was_removed_is_not_restarted_and_not_undone(bell: Bell) -> None:
    """Found by review: the restart was accepted, the run failed at once (unknown workflow),
    and that failure undid the bookings of a run that had succeeded."""
    run = start("test_repair.gone", {"names": ["hotel"]})
    settle(bell)
    send_event(run.pk, "go", {})
    settle(bell)
    assert get_run(run.pk).status == "succeeded"
    unregister_workflow("test_repair.gone")
    try:
        with pytest.raises(InvalidStateError, match="cannot be restarted: workflow "):
            restart(run.pk, from_step=1)
        outcome = operations.retry_failed_step(run.pk)  # not failed: refused before
        assert not outcome.ok
        run = get_run(run.pk)
        assert (run.status, run.generation) == ("succeeded", 1)
        assert not RunAudit.objects.filter(run=run).exists()
    finally:
        workflow(name="test_repair.gone")(gone.fn)


def test_a_run_in_flight_whose_pipeline_is_removed_fails_without_undoing(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = start("test_repair.gone", {"names": ["hotel"]})
    settle(bell)  # booked, waiting for "go"
    unregister_workflow("test_repair.gone")
    # The deploy that removed it restarted the worker, after the run began.
    monkeypatch.setattr(definitions, "LOADED_AT", timezone.now())
    try:
        send_event(run.pk, "go", {})
        settle(bell)
        run = get_run(run.pk)
        assert run.status == "failed" and run.error["type"] == "UnknownWorkflowError"
        assert "restore its definition" in run.error["message"]
        assert "registered" not in run.error["message"]  # no other pipeline's name
        assert LOG == ["do:hotel"]  # the booking stands: no undo ran
        assert not Step.objects.filter(run=run, kind="compensate").exists()
    finally:
        workflow(name="test_repair.gone")(gone.fn)


# --- a retry after a failed undo --------------------------------------------------------------


@workflow(name="test_repair.book_then_wait")
def book_then_wait(ctx: Any, name: str) -> str:
    ctx.run(book, name, compensate=broken_unbook)
    ctx.wait_for_event("go")
    return "done"


def test_retry_after_a_failed_undo_resumes_and_books_nothing_twice(bell: Bell) -> None:
    """Found by review: the failed undo's row counted as the failed step, so "retry failed
    step" said the position was past the journal; and a failed undo counted as undone, so a
    restart booked again what was never cancelled."""
    run = start(book_then_wait, {"name": "hotel"})
    settle(bell)
    cancel(run.pk, "customer withdrew")
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["type"] == "CompensationFailed"
    outcome = operations.retry_failed_step(run.pk, Actor("ops:test"))
    assert outcome.ok and outcome.message == "retrying from step 2", outcome.message
    settle(bell)
    send_event(run.pk, "go", {})
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert LOG.count("do:hotel") == 1  # the booking stood: it was not made again


# --- a child run ------------------------------------------------------------------------------

ATTEMPTS = {"n": 0}


@step
def fails_once(x: int) -> int:
    ATTEMPTS["n"] += 1
    if ATTEMPTS["n"] == 1:
        from workflows import NonRetryableError

        raise NonRetryableError("first time fails")
    return x * 10


@workflow(name="test_repair.child")
def child(ctx: Any, x: int = 1) -> int:
    return ctx.run(fails_once, x)


@workflow(name="test_repair.parent")
def parent(ctx: Any) -> int:
    return ctx.run_workflow(child, {"x": 2})


def test_a_child_run_is_restarted_through_its_parent(bell: Bell) -> None:
    """Found by review: retrying a failed child succeeded on its own, and its parent stayed
    failed with the child's old failure (retrying the parent then paid for a new child)."""
    ATTEMPTS["n"] = 0
    run = start(parent, {})
    settle(bell)
    kid = Run.objects.get(parent_id=run.pk)
    assert (get_run(run.pk).status, kid.status) == ("failed", "failed")
    outcome = operations.retry_failed_step(kid.pk, Actor("ops:test"))
    assert not outcome.ok and f"is a child of run {run.pk}" in outcome.message
    with pytest.raises(InvalidStateError, match="restart run .* from the step that started"):
        restart(kid.pk)
    assert get_run(kid.pk).generation == 1
    # through the parent, as the message says
    assert operations.retry_failed_step(run.pk, Actor("ops:test")).ok
    settle(bell)
    assert get_run(run.pk).status == "succeeded" and get_run(run.pk).output == 20


def test_canceling_a_parent_puts_the_cancel_in_its_childrens_audit(bell: Bell) -> None:
    """Found by review: a child canceled with its parent had no audit entry, and its page said
    no one had canceled it."""
    run = start("test.saga_wait", {"names": []})
    settle(bell)
    kid = start("test.saga_wait", {"names": []})
    Run.objects.filter(pk=kid.pk).update(parent=run)
    cancel(run.pk, "wrong customer", actor=Actor("ops:test"))
    entry = RunAudit.objects.get(run_id=kid.pk)
    assert (
        entry.action == "cancel" and entry.reason == f"parent run {run.pk} canceled: wrong customer"
    )
    kid = get_run(kid.pk)
    assert kid.status == "canceled"
    assert kid.error["message"].startswith(f"parent run {run.pk} canceled")


# --- budgets across generations ---------------------------------------------------------------


@step
def paid(i: int) -> int:
    record_usage(cost=0.40)
    return i


@workflow(name="test_repair.paid")
def paid_run(ctx: Any) -> list[int]:
    return [ctx.run(paid, i) for i in range(4)]


def test_a_budget_caps_the_runs_total_and_the_page_says_so(bell: Bell) -> None:
    """Found by review: the cost-per-generation table showed generation 2 at $0.40 of $1.00
    (not over) while the engine had stopped it at $1.20 of $1.00: the budget caps the total."""
    run = start(paid_run, {}, max_cost=Decimal("0.50"))
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.cost == Decimal("0.80")
    with pytest.raises(InvalidInputError, match="not above the \\$0.8000 run .* already spent"):
        restart(run.pk, from_step=1, max_cost=Decimal("0.80"))
    assert get_run(run.pk).generation == 1  # nothing changed
    restart(run.pk, max_cost=Decimal("1.00"))  # after its last finished step
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.cost == Decimal("1.20")
    first, second = generation_costs(run)
    assert (first.spent, first.total, first.over) == (Decimal("0.80"), Decimal("0.80"), True)
    assert (second.spent, second.total, second.cap) == (
        Decimal("0.40"),
        Decimal("1.20"),
        Decimal("1.00"),
    )
    assert second.over


def test_a_child_runs_page_points_to_its_parent_instead_of_retry_buttons(
    bell: Bell, django_user_model: Any, client: Any
) -> None:
    ATTEMPTS["n"] = 0
    run = start(parent, {})
    settle(bell)
    kid = Run.objects.get(parent_id=run.pk)
    admin = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client.force_login(admin)
    html = client.get(f"/runs/{kid.pk}/").content.decode()
    assert 'data-testid="child-note"' in html and f"/runs/{run.pk}/" in html
    assert "Retry failed step" not in html
    assert "Retry failed step" in client.get(f"/runs/{run.pk}/").content.decode()


FAILS = {"n": 0}


@step
def fail_once() -> None:
    FAILS["n"] += 1
    if FAILS["n"] == 1:
        from workflows import NonRetryableError

        raise NonRetryableError("first time")


@workflow(name="test_repair.mixed_undos")
def mixed_undos(ctx: Any) -> str:
    ctx.run(book, "flight")
    ctx.run(book, "hotel", compensate=broken_unbook)
    ctx.run(book, "car")
    ctx.run(fail_once)
    return "ok"


def test_a_restart_that_would_redo_a_step_whose_undo_failed_is_refused(bell: Bell) -> None:
    """Found by review of the first fix: flight and car were undone, the hotel's undo failed;
    the retry restarted from the flight (the first undone step), booked a second hotel, and
    said steps from 1 on were undone."""
    FAILS["n"] = 0
    run = start(mixed_undos, {})
    settle(bell)
    run = get_run(run.pk)
    assert run.status == "failed" and run.error["type"] == "CompensationFailed"
    outcome = operations.retry_failed_step(run.pk, Actor("ops:test"))
    assert not outcome.ok
    assert "the undo of book (#2) did not succeed" in outcome.message
    with pytest.raises(InvalidStateError, match="would do it again"):
        restart(run.pk, from_step=1)
    assert get_run(run.pk).generation == 1 and LOG.count("do:hotel") == 1
    # the way out the message names, once the hotel was cancelled by hand: a fresh run
    from workflows.core import forking

    fork = forking.fork(run.pk, from_step=1, actor=Actor("ops:test"))
    settle(bell)
    assert get_run(fork.pk).status == "succeeded"


def test_an_event_for_a_compensating_run_is_refused(bell: Bell) -> None:
    """Found by review: a 202 for an event nothing would ever take (a compensating run only
    undoes what it did, then ends)."""
    run = start("test.saga_wait", {"names": ["hotel"]})
    settle(bell)
    cancel(run.pk)  # it has a booking to undo: compensating until a worker runs the undo
    assert get_run(run.pk).status == "compensating"
    with pytest.raises(InvalidStateError, match="is compensating; it takes no more events"):
        send_event(run.pk, "go", {})
