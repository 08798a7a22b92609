"""Replay checks that cannot be dodged: a handler's ``except Exception`` does not swallow a
DeterminismError, and a replay compares a step's arguments and a fan-out's width, not only the
kind and name of each call. Old journal rows (without a digest) still replay."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.sample_workflows import add_one, double
from tests.support import Bell
from workflows import DeterminismError, get_run, start, workflow
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def variant() -> str:
    return os.environ.get("SLUICE_TEST_VARIANT", "a")


@workflow(name="test.replay.swallowing")
def swallowing(ctx: Any) -> str:
    try:
        if variant() == "a":
            ctx.run(add_one, 1)
        else:
            ctx.run(double, 1)
    except Exception:  # an author's broad except: it must not hide a changed workflow
        pass
    ctx.sleep(60)
    return variant()


@workflow(name="test.replay.swallow_then_wait")
def swallow_then_wait(ctx: Any) -> Any:
    try:
        ctx.run(add_one if variant() == "a" else double, 1)
    except BaseException:  # noqa: BLE001  (even the broadest except must not hide it)
        pass
    ctx.sleep(60)
    return ctx.wait_for_event("never", timeout=3600)


@workflow(name="test.replay.arguments")
def arguments(ctx: Any) -> int:
    value = ctx.run(add_one, 1 if variant() == "a" else 2)
    ctx.sleep(60)
    return int(value)


@workflow(name="test.replay.width")
def width(ctx: Any) -> list[int]:
    items = [1, 2] if variant() == "a" else [1, 2, 3]
    values = ctx.map(add_one, items)
    ctx.sleep(60)
    return list(values)


def _replay_as_b(bell: Bell, run: Run, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Journal ``run`` under variant a up to its sleep, then 'deploy' variant b and wake it."""
    bell.settle()
    assert get_run(run.pk).status == "suspended"
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "b")
    Step.objects.filter(run=run, kind="sleep", status="waiting").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )
    bell.settle()
    return get_run(run.pk)


def test_it_fails_the_run_even_when_the_handler_catches_exception(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    run = _replay_as_b(bell, start("test.replay.swallowing", {}), monkeypatch)
    assert run.status == "failed"
    assert run.error["type"] == "DeterminismError"
    assert "at position 1 the journal has step 'add_one'" in run.error["message"]
    assert not issubclass(DeterminismError, Exception)


def test_it_fails_a_replay_whose_step_gets_other_arguments(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    run = _replay_as_b(bell, start("test.replay.arguments", {}), monkeypatch)
    assert run.status == "failed"
    assert run.error["type"] == "DeterminismError"
    assert "position 1" in run.error["message"]
    assert "other arguments" in run.error["message"]


def test_it_fails_a_replay_whose_fan_out_has_another_width(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    run = _replay_as_b(bell, start("test.replay.width", {}), monkeypatch)
    assert run.status == "failed"
    assert run.error["type"] == "DeterminismError"
    assert "with 2 branches but the code now fans out 3" in run.error["message"]


def test_it_replays_unchanged_code_and_old_rows_without_a_digest(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    fresh = start("test.replay.width", {})
    old = start("test.replay.arguments", {})
    bell.settle()
    assert Step.objects.filter(run=fresh, kind="parallel").exclude(digest="").exists()
    assert Step.objects.filter(run=old, kind="step").exclude(digest="").exists()
    # A journal written before digests existed: nothing to compare, the replay goes on.
    Step.objects.filter(run=old).update(digest="")
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    Step.objects.filter(kind="sleep", status="waiting").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )
    bell.settle()
    assert get_run(fresh.pk).status == "succeeded"
    assert get_run(fresh.pk).output == [2, 3]
    assert get_run(old.pk).status == "succeeded"
    assert get_run(old.pk).output == 2


def test_it_fails_the_run_when_the_handler_swallows_the_error_and_then_waits(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_TEST_VARIANT", "a")
    run = _replay_as_b(bell, start("test.replay.swallow_then_wait", {}), monkeypatch)
    assert run.status == "failed"
    assert run.error["type"] == "DeterminismError"
    assert not Step.objects.filter(run=run, kind="event").exists()
