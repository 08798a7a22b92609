"""Durable timers, events with timeout and default, child workflows, journaled randomness."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.sample_workflows import add_one, chain, double, parent_waiting_child, sleeper, waiter
from tests.support import Bell
from workflows import (
    ChildWorkflowFailed,
    NonRetryableError,
    cancel,
    get_run,
    send_event,
    start,
    step,
    workflow,
)
from workflows.models import Event, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@workflow(name="test.parent")
def parent_wf(ctx: Any, n: int = 2) -> Any:
    child = ctx.run_workflow(chain, {"n": n})
    return {"child": child}


@step
def boom() -> None:
    raise NonRetryableError("child exploded")


@workflow(name="test.failing_child")
def failing_child(ctx: Any) -> None:
    ctx.run(boom)


@workflow(name="test.parent_of_failing")
def parent_of_failing(ctx: Any) -> str:
    try:
        ctx.run_workflow(failing_child, {})
    except ChildWorkflowFailed as exc:
        return f"child failed: {exc.error['message'][:40]}"
    return "no"


@workflow(name="test.random")
def randomness(ctx: Any) -> Any:
    r = ctx.random()
    u = ctx.uuid()
    ctx.sleep(60)
    return {"r": r, "u": str(u)}


@workflow(name="test.nondeterministic")
def nondeterministic(ctx: Any) -> str:
    name = os.environ.get("SLUICE_TEST_VARIANT", "a")
    if name == "a":
        ctx.run(add_one, 1)
    else:
        ctx.run(double, 1)
    ctx.sleep(60)
    return name


def expire(run: Run, kind: str) -> None:
    Step.objects.filter(run=run, kind=kind, status="waiting").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )


def test_sleep_is_a_column_fired_by_the_sweep(bell: Bell) -> None:
    run = start(sleeper, {"seconds": 3600})
    bell.settle()
    timer = Step.objects.get(run=run, kind="sleep")
    assert timer.status == "waiting"
    assert timer.wake_at > timezone.now() + timedelta(minutes=59)
    assert get_run(run.pk).status == "suspended"
    expire(run, "sleep")
    bell.settle()
    timer.refresh_from_db()
    assert timer.status == "succeeded"
    assert get_run(run.pk).status == "succeeded"


def test_an_event_sent_before_the_wait_is_kept_and_consumed_once(bell: Bell) -> None:
    run = start(waiter, {})
    send_event(run.pk, "approved", {"by": "early"})
    send_event(run.pk, "approved", {"by": "second"})
    bell.drain()
    run = get_run(run.pk)
    assert run.output["event"] == {"by": "early"}
    consumed = Event.objects.filter(run=run, consumed_by__isnull=False)
    assert [e.payload for e in consumed] == [{"by": "early"}]


def test_an_event_wait_times_out_with_its_default(bell: Bell) -> None:
    run = start(waiter, {"timeout": 60})
    bell.settle()
    expire(run, "event")
    bell.settle()
    run = get_run(run.pk)
    assert run.output == {"first": 1, "event": {"by": None}}
    assert Step.objects.get(run=run, kind="event").usage == {"timed_out": True}


def test_a_child_workflow_returns_its_output(bell: Bell) -> None:
    parent = start(parent_wf, {"n": 3})
    bell.drain()
    parent = get_run(parent.pk)
    assert parent.output == {"child": 3}
    child = Run.objects.get(parent=parent)
    assert child.status == "succeeded"


def test_child_failure_raises_in_the_parent(bell: Bell) -> None:
    parent = start(parent_of_failing, {})
    bell.drain()
    assert get_run(parent.pk).output.startswith("child failed: child run")


def test_cancel_cascades_to_children(bell: Bell) -> None:
    parent = start(parent_waiting_child, {})
    bell.drain()
    child = Run.objects.get(parent=parent)
    assert child.status == "suspended"
    cancel(parent.pk)
    child.refresh_from_db()
    assert child.status == "canceled"


def test_canceling_a_child_fails_the_parents_wait(bell: Bell) -> None:
    parent = start(parent_waiting_child, {})
    bell.drain()
    child = Run.objects.get(parent=parent)
    cancel(child.pk)
    bell.drain()
    parent = get_run(parent.pk)
    assert parent.status == "failed"
    assert "canceled" in parent.error["message"]


def test_now_random_and_uuid_are_journaled(bell: Bell) -> None:
    run = start(randomness, {})
    bell.drain()
    rows = {s.kind: s.result for s in Step.objects.filter(run=run)}
    expire(run, "sleep")
    bell.settle()
    out = get_run(run.pk).output
    assert out == {"r": rows["random"], "u": rows["uuid"]}


def test_replay_detects_a_changed_workflow(bell: Bell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    run = start(nondeterministic, {})
    bell.drain()
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "b")
    expire(run, "sleep")
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "DeterminismError"
    assert (
        "at position 1 the journal has step 'add_one' but the code now calls step 'double'"
        in run.error["message"]
    )


@workflow(name="test.waits.plugin_timeout")
def plugin_timeout(ctx: Any) -> Any:
    return ctx.wait_for(
        "approval",
        "sign-off",
        on_open=lambda row: None,
        timeout=timedelta(hours=1),
        default={"signed": False},
    )


def test_it_fires_a_plugin_wait_with_a_timeout_and_goes_on_with_its_default(bell: Bell) -> None:
    run = start(plugin_timeout, {})
    bell.settle()
    assert get_run(run.pk).status == "suspended"
    expire(run, "approval")
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == {"signed": False}
    row = Step.objects.get(run=run, kind="approval")
    assert row.usage == {"timed_out": True}
