"""Compensation on real Celery workers and PostgreSQL: a worker SIGKILLed in the middle of
compensating is survived. The sweep reclaims the run's lease and another worker resumes the
undos where the journal says: an undo already checkpointed never runs again, the one that was
cut off runs again (attempt 2), and the rest run once, in reverse order of completion."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.live import wait_until
from tests.workflows import saga_workflows  # noqa: F401  (registers the saga workflows)
from workflows import get_run, start
from workflows.models import Run, Step

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(run: Run) -> Run | None:
    fresh = get_run(run.pk)
    return fresh if fresh.is_terminal else None


def lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def test_a_worker_killed_while_compensating_resumes_and_no_undo_runs_twice(
    live: Any, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.log"
    slow = tmp_path / "slow"
    Path(f"{slow}.hotel").touch()  # the hotel's undo takes 3 s: the worker dies during it
    env = {
        "SLUICE_WORKFLOW_MODULES": "tests.sample_workflows,tests.workflows.saga_workflows",
        "SLUICE_TEST_CALL_LOG": str(calls),
        "SLUICE_TEST_SLOW_UNDO": str(slow),
    }
    live.beat()
    worker = live.worker(**env)
    run = start("test.saga_slow", {"names": ["flight", "hotel", "car"]})
    wait_until(lambda: "start-undo:hotel" in lines(calls), 60, message="the hotel's undo")
    fresh = Run.objects.get(pk=run.pk)
    assert fresh.status == "compensating"
    owner_pid = int(fresh.lease_owner.split(":")[1])
    os.kill(owner_pid, signal.SIGKILL)  # the prefork child running the undo
    live.kill(worker, signal.SIGKILL)  # and its parent
    Path(f"{slow}.hotel").unlink()
    live.worker(name="w2", **env)
    run = wait_until(lambda: finished(run), 60, message="the run to end")
    assert run.status == "failed" and run.error["compensated"] is True, run.error
    seen = lines(calls)
    assert [e for e in seen if e.startswith("undo:")] == ["undo:car", "undo:hotel", "undo:flight"]
    assert seen.count("start-undo:car") == 1  # checkpointed before the kill: never again
    assert seen.count("start-undo:hotel") == 2  # cut off by the kill, then run again
    assert seen.count("start-undo:flight") == 1
    assert [e for e in seen if e.startswith("do:")] == ["do:flight", "do:hotel", "do:car"]
    undos = Step.objects.filter(run=run, kind="compensate", superseded=False).order_by("position")
    assert [(u.position, u.status, u.attempt) for u in undos] == [
        (5, "succeeded", 1),
        (6, "succeeded", 2),
        (7, "succeeded", 1),
    ]
    assert "WorkerLost" not in str(run.error)
