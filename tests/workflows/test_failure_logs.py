"""A failed step or run writes a log line: a misconfiguration that fails every run (a provider
key rejected) showed only on the run pages, invisible to log-based alerting."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support import Bell
from workflows import NonRetryableError, RetryPolicy, get_run, start, step, workflow

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@step(retry=RetryPolicy(max_attempts=2))
def rejected(key: str) -> None:
    raise NonRetryableError(f"credentials rejected for {key[:3]}…")


@step(retry=RetryPolicy(max_attempts=2))
def flaky() -> None:
    raise ConnectionError("provider unavailable")


@workflow(name="test_logs.inline")
def inline(ctx: Any) -> None:
    ctx.run(rejected, "sk-1234")


@workflow(name="test_logs.branch")
def branch(ctx: Any) -> None:
    ctx.parallel([ctx.call(flaky)])


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Any:
    for name in ("workflows", "workflows.steps", "workflows.core.services"):
        logging.getLogger(name).addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    yield caplog
    for name in ("workflows", "workflows.steps", "workflows.core.services"):
        logging.getLogger(name).removeHandler(caplog.handler)


def lines(caplog: Any) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records]


def test_a_step_that_fails_for_good_and_its_run_are_logged(bell: Bell, records: Any) -> None:
    run = start(inline, {})
    bell.settle()
    assert get_run(run.pk).status == "failed"
    found = lines(records)
    assert (
        "ERROR",
        f"step 'rejected' of run {run.pk} failed (attempt 1 of 2): "
        "NonRetryableError: credentials rejected for sk-…",
    ) in found
    assert any(
        level == "ERROR" and text.startswith(f"run {run.pk} (test_logs.inline) failed: StepFailed")
        for level, text in found
    ), found
    assert "sk-1234" not in str(found)  # the message is the journal's, as the step wrote it


def test_an_attempt_that_will_be_retried_is_a_warning(bell: Bell, records: Any) -> None:
    run = start(branch, {})
    bell.settle()
    found = lines(records)
    assert any(
        level == "WARNING"
        and text.startswith(f"step 'flaky' of run {run.pk} failed (attempt 1 of 2): ")
        and "ConnectionError: provider unavailable; retried in" in text
        for level, text in found
    ), found
