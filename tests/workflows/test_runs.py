"""Run lifecycle: pending → running ⇄ suspended → succeeded | failed | canceled, restart."""

from __future__ import annotations

from typing import Any

import pytest

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import (
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
    StepFailed,
    UnknownWorkflowError,
    cancel,
    get_run,
    restart,
    send_event,
    start,
    workflow,
)
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@workflow(name="test.catch")
def catch_wf(ctx: Any) -> str:
    try:
        ctx.run(samples.refuse, "bad input")
    except StepFailed as exc:
        return f"caught: {exc.error['message']}"
    return "not reached"


def test_it_starts_pending_and_rings(bell: Bell) -> None:
    run = start(samples.chain, {"n": 2})
    assert run.status == "pending"
    assert bell.sent == [("advance", (str(run.pk), 1))]


def test_it_runs_sequential_steps_inline_to_success(bell: Bell) -> None:
    run = start(samples.chain, {"n": 4, "start": 10})
    assert bell.drain() == 1  # one message advanced the whole chain: no replay between steps
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == 14
    steps = list(run.steps.order_by("position"))
    assert [s.position for s in steps] == [1, 2, 3, 4]
    assert all(s.status == "succeeded" and s.attempt == 1 for s in steps)
    assert [s.result for s in steps] == [11, 12, 13, 14]
    assert run.started_at and run.finished_at


def test_it_suspends_and_resumes_on_event(bell: Bell) -> None:
    run = start(samples.waiter, {})
    bell.drain()
    assert get_run(run.pk).status == "suspended"
    send_event(run.pk, "approved", {"by": "ops"})
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == {"first": 1, "event": {"by": "ops"}}


def test_it_fails_when_a_step_fails_for_good(bell: Bell) -> None:
    run = start(samples.refuse_wf, {"reason": "bad data"})
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert "bad data" in run.error["message"]
    step = run.steps.get()
    assert step.status == "failed" and step.attempt == 1  # NonRetryableError: no retries


def test_a_workflow_can_catch_a_failed_step(bell: Bell) -> None:
    run = start(catch_wf, {})
    bell.drain()
    assert get_run(run.pk).output == "caught: bad input"


def test_it_cancels_a_suspended_run(bell: Bell) -> None:
    run = start(samples.waiter, {})
    bell.drain()
    run = cancel(run.pk)
    assert run.status == "canceled"
    assert run.generation == 2
    assert run.steps.get(kind="event").status == "canceled"


def test_cancel_of_a_finished_run_is_a_clear_error(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1})
    bell.drain()
    with pytest.raises(InvalidStateError, match="already succeeded"):
        cancel(run.pk)


def test_stale_doorbell_after_cancel_is_ignored(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1})
    cancel(run.pk)
    bell.drain()  # the advance message carries generation 1; the run is at 2
    run = get_run(run.pk)
    assert run.status == "canceled"
    assert run.steps.count() == 0


def test_restart_from_step_supersedes_later_rows(bell: Bell) -> None:
    run = start(samples.chain, {"n": 3})
    bell.drain()
    restart(run.pk, from_step=2)
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded" and run.output == 3
    assert run.generation == 2
    rows = list(run.steps.order_by("position", "id"))
    superseded = [r for r in rows if r.superseded]
    assert [(r.position, r.generation) for r in superseded] == [(2, 1), (3, 1)]
    live = [r for r in rows if not r.superseded]
    assert [(r.position, r.generation) for r in live] == [(1, 1), (2, 2), (3, 2)]


def test_restart_of_a_running_run_is_refused(bell: Bell) -> None:
    run = start(samples.waiter, {})
    bell.drain()
    with pytest.raises(InvalidStateError, match="only a finished run"):
        restart(run.pk)


def test_restart_without_from_step_resumes_at_the_failure(bell: Bell) -> None:
    run = start(samples.refuse_wf, {})
    bell.drain()
    restart(run.pk)
    assert Step.objects.get(run=run, superseded=True).position == 1


def test_bad_input_is_a_clear_error_at_start(bell: Bell) -> None:
    with pytest.raises(UnknownWorkflowError, match="unknown workflow 'nope'"):
        start("nope", {})
    with pytest.raises(InvalidInputError, match="n: Input should be a valid integer"):
        start(samples.chain, {"n": "many"})
    with pytest.raises(InvalidInputError, match="not JSON-serializable"):
        start(samples.chain, {"n": object()})
    with pytest.raises(InvalidInputError, match="must be a JSON object"):
        start(samples.chain, [1, 2])  # type: ignore[arg-type]
    assert Run.objects.count() == 0


def test_unknown_run_is_a_clear_error(bell: Bell) -> None:
    with pytest.raises(RunNotFoundError):
        get_run("00000000-0000-0000-0000-000000000000")
    with pytest.raises(RunNotFoundError):
        cancel("not-a-uuid")


def test_send_event_to_a_finished_run_is_a_clear_error(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1})
    bell.drain()
    with pytest.raises(InvalidStateError, match="takes no more events"):
        send_event(run.pk, "approved", {})


def test_idempotency_key_returns_the_existing_run(bell: Bell) -> None:
    a = start(samples.chain, {"n": 1}, idempotency_key="req-42")
    b = start(samples.chain, {"n": 1}, idempotency_key="req-42")
    assert a.pk == b.pk
    assert Run.objects.count() == 1


def test_on_complete_runs_once_in_the_terminal_transaction(bell: Bell) -> None:
    from tests.workflows import hooks

    hooks.SEEN.clear()
    ok = start(samples.chain, {"n": 1}, on_complete="tests.workflows.hooks.record")
    bad = start(samples.refuse_wf, {}, on_complete="tests.workflows.hooks.record")
    waiting = start(samples.waiter, {}, on_complete="tests.workflows.hooks.record")
    bell.drain()
    cancel(waiting.pk)
    bell.drain()
    assert sorted(hooks.SEEN) == sorted(
        [(str(ok.pk), "succeeded"), (str(bad.pk), "failed"), (str(waiting.pk), "canceled")]
    )


def test_a_broken_on_complete_does_not_wedge_the_run(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1}, on_complete="tests.workflows.hooks.explode")
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert "hook exploded" in run.error["on_complete"]
