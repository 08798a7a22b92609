"""Real Celery worker processes on PostgreSQL + Redis: runs complete, crashes are survived,
a flushed broker loses nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import sample_workflows as samples
from tests.live import flush_broker, wait_until
from workflows import get_run, send_event, start
from workflows.models import Run, Step

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(run: Run) -> Run | None:
    fresh = get_run(run.pk)
    return fresh if fresh.is_terminal else None


def test_it_runs_sequential_and_parallel_steps_on_real_workers(live: Any) -> None:
    live.worker()
    live.beat()
    chain = start(samples.chain, {"n": 10})
    fan = start(samples.fanout, {"items": list(range(12))})
    chain = wait_until(lambda: finished(chain), 60, message="chain run")
    fan = wait_until(lambda: finished(fan), 60, message="fan-out run")
    assert (chain.status, chain.output) == ("succeeded", 10)
    assert fan.status == "succeeded"
    assert fan.output["doubled"] == [i * 2 for i in range(12)]


def test_a_worker_killed_mid_step_is_survived_and_the_attempt_counted(
    live: Any, tmp_path: Path
) -> None:
    """SIGKILL the whole worker (parent and children) while it runs a step."""
    live.beat()
    worker = live.worker()
    run = start(samples.nap_chain, {"n": 3, "seconds": 2})
    row = wait_until(
        lambda: Step.objects.filter(run=run, position=2, status="running").first(),
        60,
        message="step 2 running",
    )
    # An inline step runs under its run's lease: the owner names the process running it.
    owner_pid = int(Run.objects.get(pk=run.pk).lease_owner.split(":")[1])
    assert row.lease_owner == ""
    os.kill(owner_pid, signal.SIGKILL)  # the prefork child executing the step
    live.kill(worker, signal.SIGKILL)  # and its parent, so nothing requeues for us
    killed_at = time.monotonic()
    live.worker(name="w2")
    wait_until(
        lambda: (
            Step.objects.filter(run=run, position=2, status="running", attempt=2).exists()
            or Step.objects.filter(run=run, position=2, status="succeeded", attempt=2).exists()
        ),
        30,
        message="step 2 running again",
    )
    assert time.monotonic() - killed_at <= 15
    run = wait_until(lambda: finished(run), 60, message="run to finish")
    assert run.status == "succeeded"
    step = Step.objects.get(run=run, position=2)
    assert (step.status, step.attempt) == ("succeeded", 2)
    assert Step.objects.get(run=run, position=1).attempt == 1  # not redone


def test_a_step_that_kills_its_worker_every_time_fails_after_its_budget(live: Any) -> None:
    live.beat()
    live.worker()
    run = start(samples.always_suicide_wf, {})
    run = wait_until(lambda: finished(run), 90, message="run to fail")
    assert run.status == "failed"
    step = Step.objects.get(run=run)
    assert step.status == "failed"
    assert step.error["type"] == "WorkerLost"
    assert step.attempt == 2


def test_a_flushed_broker_loses_no_run(live: Any) -> None:
    live.beat()
    run = start(samples.waiter, {})
    fan = start(samples.fanout, {"items": [1, 2, 3]})
    flush_broker()  # every doorbell is gone before any worker saw it
    live.worker()
    wait_until(lambda: get_run(run.pk).status == "suspended", 60, message="run to suspend")
    flush_broker()
    send_event(run.pk, "approved", {"by": "ops"})
    flush_broker()  # and the wake-up doorbell too
    run = wait_until(lambda: finished(run), 60, message="run to finish")
    fan = wait_until(lambda: finished(fan), 60, message="fan-out to finish")
    assert run.output == {"first": 1, "event": {"by": "ops"}}
    assert fan.status == "succeeded"


def test_a_limited_pool_never_runs_more_than_its_limit(live: Any) -> None:
    from workflows.models import Pool

    Pool.objects.create(name="limited", max_concurrency=2)
    live.beat()
    live.worker(concurrency=4)
    run = start(samples.limited, {"n": 12})
    peak = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not get_run(run.pk).is_terminal:
        peak = max(peak, Step.objects.filter(run=run, status="running", branch__gte=0).count())
        time.sleep(0.01)
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == list(range(12))
    assert 1 <= peak <= 2
