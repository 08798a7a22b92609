"""Step lifecycle: pending → running → succeeded | failed, running → retrying → running,
timeouts, payload limits, usage."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core.definitions import RetryPolicy
from workflows.models import Blob, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@step(timeout=0.3, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, jitter=False))
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@workflow(name="test.slow")
def slow_wf(ctx: Any, seconds: float) -> str:
    return ctx.run(slow, seconds)


def due_now(run: Run) -> None:
    """Pretend the backoff is over: write a past timestamp instead of sleeping."""
    Step.objects.filter(run=run, status="retrying").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )


def test_it_retries_with_backoff_in_a_column_then_succeeds(bell: Bell) -> None:
    samples.CALLS.clear()
    run = start(samples.flaky_wf, {"key": "a", "failures": 2})
    bell.drain()
    step = Step.objects.get(run=run)
    assert step.status == "retrying"
    assert step.attempt == 1
    assert step.wake_at is not None and step.wake_at > step.finished_at - timedelta(seconds=1)
    assert step.error["message"] == "flaky failure 1"
    assert get_run(run.pk).status == "suspended"  # no sleeping in the worker
    for _ in range(2):
        due_now(run)
        bell.settle()
    step.refresh_from_db()
    assert (step.status, step.attempt, step.result) == ("succeeded", 3, "ok after 3")
    assert get_run(run.pk).output == "ok after 3"


def test_it_fails_after_max_attempts(bell: Bell) -> None:
    samples.CALLS.clear()
    run = start(samples.flaky_wf, {"key": "b", "failures": 10})
    bell.drain()
    for _ in range(3):
        due_now(run)
        bell.settle()
    step = Step.objects.get(run=run)
    assert (step.status, step.attempt) == ("failed", 3)
    assert get_run(run.pk).status == "failed"


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.5, max_backoff=4, jitter=False)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    jittered = RetryPolicy(initial_backoff=2, max_backoff=60, jitter=True)
    assert all(1.0 <= jittered.backoff(1) <= 2.0 for _ in range(50))


def test_a_step_timeout_fails_the_attempt(bell: Bell) -> None:
    run = start(slow_wf, {"seconds": 2})
    bell.drain()
    step = Step.objects.get(run=run)
    assert step.status == "retrying"
    assert step.error["type"] == "StepTimeout"
    assert "timed out after 0.3s" in step.error["message"]


@override_settings(SLUICE_PAYLOAD_INLINE_LIMIT=100, SLUICE_PAYLOAD_HARD_LIMIT=10_000)
def test_large_values_are_stored_out_of_row(bell: Bell) -> None:
    run = start(samples.big_wf, {"n": 500})
    bell.drain()
    step = Step.objects.get(run=run)
    assert step.result["$blob"] == Blob.objects.get(run=run).pk
    assert get_run(run.pk).output == 500


@override_settings(SLUICE_PAYLOAD_INLINE_LIMIT=100, SLUICE_PAYLOAD_HARD_LIMIT=10_000)
def test_a_value_over_the_hard_limit_fails_the_step_cleanly(bell: Bell) -> None:
    run = start(samples.big_wf, {"n": 20_000})
    bell.drain()
    step = Step.objects.get(run=run)
    assert step.status == "failed"
    assert step.attempt == 1  # not retried: it would only fail again
    assert "over the hard limit" in step.error["message"]
    run = get_run(run.pk)
    assert run.status == "failed"


@override_settings(SLUICE_PAYLOAD_HARD_LIMIT=1000)
def test_oversized_input_is_refused_at_start(bell: Bell) -> None:
    from workflows import PayloadTooLargeError

    with pytest.raises(PayloadTooLargeError, match="over the hard limit"):
        start(samples.big_wf, {"n": 1, "pad": "x" * 5000})


def test_a_step_that_crashed_its_worker_counts_the_attempt_on_replay(bell: Bell) -> None:
    """Simulate a SIGKILL: the journal says 'running, attempt 1' and the lease expired."""
    run = start(samples.chain, {"n": 2})
    bell.drain()
    Run.objects.filter(pk=run.pk).update(
        status="running",
        lease_owner="dead:1",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
        output=None,
    )
    Step.objects.filter(run=run, position=2).update(
        status="running", attempt=1, result=None, lease_owner="dead:1"
    )
    bell.settle()
    step = Step.objects.get(run=run, position=2)
    assert (step.status, step.attempt) == ("succeeded", 2)
    assert get_run(run.pk).status == "succeeded"


def test_a_step_out_of_attempts_after_crashes_fails(bell: Bell) -> None:
    run = start(samples.chain, {"n": 1})
    Run.objects.filter(pk=run.pk).update(
        status="running",
        lease_owner="dead:1",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
        current_step="add_one",
    )
    Step.objects.create(
        run=run,
        position=1,
        name="add_one",
        kind="step",
        status="running",
        attempt=3,
        max_attempts=3,
        lease_owner="dead:1",
    )
    bell.lose_all()
    bell.settle()
    step = Step.objects.get(run=run)
    assert step.status == "failed"
    assert step.error["type"] == "WorkerLost"
    assert get_run(run.pk).status == "failed"


@step
def fresh_list(n: int) -> dict[str, Any]:
    return {"items": list(range(n))}


@step
def count_items(value: dict[str, Any]) -> int:
    return len(value["items"])


@workflow(name="test.mutates_a_result")
def mutates_a_result(ctx: Any) -> int:
    value = ctx.run(fresh_list, 3)
    value["items"].append("added by the handler")  # in place, before the next commit
    return ctx.run(count_items, value)


def test_a_result_changed_in_place_by_the_handler_is_journaled_as_the_step_returned_it(
    bell: Bell,
) -> None:
    """The journal records what the step returned, on every backend: a replay must hand the
    handler that value again, not one it already changed (it would change it twice)."""
    run = start(mutates_a_result, {})
    bell.drain()
    assert get_run(run.pk).output == 4
    first, second = Step.objects.filter(run=run).order_by("position")
    assert first.result == {"items": [0, 1, 2]}
    assert second.args == {"args": [{"items": [0, 1, 2, "added by the handler"]}], "kwargs": {}}
