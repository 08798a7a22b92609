"""Restart without a position after a failure outside any step resumes after the last
finished position (no LLM call runs twice); the admin's "retry failed step" does the same; and
``only_failed_branches`` re-runs only the failed branches of a fan-out, keeping the results of
the siblings that succeeded."""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tests.sample_workflows import CALLS, _count
from tests.support import Bell
from workflows import NonRetryableError, get_run, restart, start, step, workflow
from workflows.core.audit import Actor
from workflows.models import RunAudit, Step
from workflows.operations import retry_failed_step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@step
def expensive(x: int) -> int:
    _count(f"expensive:{x}")
    return x * 10


@step
def picky(x: int) -> int:
    _count(f"picky:{x}")
    if str(x) in os.environ.get("SLUICE_TEST_REFUSE", "").split(","):
        raise NonRetryableError(f"refused {x}")
    return x * 10


@workflow(name="test.restart.bug_between_steps")
def bug_between_steps(ctx: Any) -> int:
    a = ctx.run(expensive, 1)
    b = ctx.run(expensive, 2)
    if os.environ.get("SLUICE_TEST_BUG"):
        raise RuntimeError("a bug in the handler, after its steps")
    return int(a + b)


@workflow(name="test.restart.fan_out")
def fan_out(ctx: Any, items: list[int]) -> list[int]:
    first = ctx.run(expensive, 0)
    return [first, *ctx.map(picky, items)]


def calls(prefix: str) -> int:
    return sum(n for name, n in CALLS.items() if name.startswith(prefix))


def test_it_resumes_after_the_last_finished_position(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    CALLS.clear()
    monkeypatch.setenv("SLUICE_TEST_BUG", "1")
    run = start("test.restart.bug_between_steps", {})
    bell.settle()
    assert get_run(run.pk).status == "failed"
    assert calls("expensive:") == 2
    monkeypatch.delenv("SLUICE_TEST_BUG")  # the fix is deployed
    restart(run.pk)
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded" and run.output == 30
    assert calls("expensive:") == 2  # nothing that finished ran again
    assert RunAudit.objects.get(run=run).from_step == 3


def test_the_admin_retry_resumes_after_the_last_finished_position(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    CALLS.clear()
    ops = get_user_model().objects.create_user("ops", is_staff=True)
    monkeypatch.setenv("SLUICE_TEST_BUG", "1")
    run = start("test.restart.bug_between_steps", {})
    bell.settle()
    monkeypatch.delenv("SLUICE_TEST_BUG")
    outcome = retry_failed_step(run.pk, Actor.of_user(ops), "fixed the handler")
    assert outcome.ok, outcome.message
    bell.settle()
    assert get_run(run.pk).status == "succeeded"
    assert calls("expensive:") == 2


def test_it_reruns_only_the_failed_branches(bell: Bell, monkeypatch: pytest.MonkeyPatch) -> None:
    CALLS.clear()
    monkeypatch.setenv("SLUICE_TEST_REFUSE", "2,4")
    run = start("test.restart.fan_out", {"items": [1, 2, 3, 4, 5]})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert {name: n for name, n in CALLS.items() if name.startswith("picky:")} == {
        f"picky:{i}": 1 for i in range(1, 6)
    }
    monkeypatch.setenv("SLUICE_TEST_REFUSE", "")
    restart(run.pk, only_failed_branches=True)
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == [0, 10, 20, 30, 40, 50]
    # Only branches 2 and 4 ran again; the siblings and the step before kept their results.
    assert {name: n for name, n in CALLS.items() if name.startswith("picky:")} == {
        "picky:1": 1,
        "picky:2": 2,
        "picky:3": 1,
        "picky:4": 2,
        "picky:5": 1,
    }
    assert calls("expensive:") == 1
    # History is kept: the failed branch rows are superseded, not deleted.
    superseded = Step.objects.filter(run=run, superseded=True)
    assert sorted(superseded.filter(branch__gte=0).values_list("branch", flat=True)) == [1, 3]
    assert superseded.filter(kind="parallel", status="failed").count() == 1


def test_the_admin_retry_reruns_only_the_failed_branch(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    CALLS.clear()
    monkeypatch.setenv("SLUICE_TEST_REFUSE", "3")
    run = start("test.restart.fan_out", {"items": [1, 2, 3]})
    bell.settle()
    monkeypatch.setenv("SLUICE_TEST_REFUSE", "")
    assert retry_failed_step(run.pk).ok
    bell.settle()
    assert get_run(run.pk).output == [0, 10, 20, 30]
    assert CALLS["picky:1"] == 1 and CALLS["picky:2"] == 1 and CALLS["picky:3"] == 2
