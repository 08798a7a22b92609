"""A worker that shuts down warm (SIGTERM from a deploy or a supervisor, Ctrl-C in ``make run``)
finishes the step in hand and takes no more (``workflows.core.draining``).

Found by review: a finishing branch hands its pool slot to the next waiting step, run in the
same task, so under a backlog the worker's "current task" never ended; the supervisor's grace
ran out and it killed the worker in the middle of a step, which then ran again elsewhere (an
LLM call paid twice; ``make run`` Ctrl-C'd during a 60-document batch ran 6 steps twice). A run
advanced inline likewise ran its sequential steps one after another."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from tests.live import wait_until
from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core import draining
from workflows.models import Pool, Run, Step

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _not_draining() -> Iterator[None]:
    draining.reset()
    yield
    draining.reset()


@step(pool="drain_pool")
def shutdown_during(x: int) -> int:
    """The worker's shutdown begins while this step runs."""
    if x == 1:
        draining.begin()
    return x * 10


@workflow(name="test.drain.fanout", max_parallel=50)
def drain_fanout(ctx: Any) -> list[int]:
    return ctx.map(shutdown_during, [1, 2, 3])


@step
def shutdown_inline(x: int) -> int:
    if x == 1:
        draining.begin()
    return x + 100


@workflow(name="test.drain.chain")
def drain_chain(ctx: Any) -> list[int]:
    return [ctx.run(shutdown_inline, i) for i in (1, 2, 3)]


@pytest.mark.core
def test_a_draining_worker_hands_no_slot_on(bell: Bell) -> None:
    Pool.objects.update_or_create(name="drain_pool", defaults={"max_concurrency": 1})
    run = start("test.drain.fanout", {})
    bell.drain(limit=2)  # the fan-out, then the first branch's doorbell
    rows = {r.branch: r for r in Step.objects.filter(run=run, branch__gte=0)}
    assert (rows[0].status, rows[0].attempt) == ("succeeded", 1)
    # The slot it would have passed on: the next step goes back to the pool, not counted,
    # and is rung for (a doorbell is waiting), for a worker that is not stopping.
    assert (rows[1].status, rows[1].attempt, rows[1].lease_owner) == ("pending", 0, "")
    assert rows[2].status == "pending"
    assert ("step", (rows[1].pk,)) in bell.messages
    draining.reset()  # another worker takes over
    bell.settle()
    done = get_run(run.pk)
    assert (done.status, done.output) == ("succeeded", [10, 20, 30])
    assert [s.attempt for s in Step.objects.filter(run=run, branch__gte=0)] == [1, 1, 1]


@pytest.mark.core
def test_a_draining_worker_runs_no_further_inline_step(bell: Bell) -> None:
    run = start("test.drain.chain", {})
    bell.drain(limit=1)
    row = Run.objects.get(pk=run.pk)
    steps = list(Step.objects.filter(run=run).order_by("position"))
    assert [(s.position, s.status) for s in steps] == [(1, "succeeded")]  # written, and no more
    assert (row.status, row.lease_owner) == ("running", "")
    assert row.wake_requested_at is not None
    assert ("advance", (str(run.pk), row.generation)) in bell.messages  # rung for at once
    draining.reset()
    bell.settle()
    done = get_run(run.pk)
    assert (done.status, done.output) == ("succeeded", [101, 102, 103])
    assert [s.attempt for s in Step.objects.filter(run=run)] == [1, 1, 1]


@pytest.mark.integration
def test_a_real_worker_stops_within_its_step_under_a_backlog(live: Any) -> None:
    """A prefork worker, SIGTERM to its main process only (as a deploy sends it): its child
    finishes the 1 s step in hand and the worker exits, where it ran the whole backlog."""
    if connection.vendor != "postgresql":
        pytest.skip("workers run on PostgreSQL")
    Pool.objects.update_or_create(name="limited", defaults={"max_concurrency": 1})
    worker = live.worker("drain1", concurrency=1, queues="default,limited")
    run = start("test.limited_naps", {"n": 8, "seconds": 1.0})
    wait_until(
        lambda: (
            Step.objects.filter(run=run, branch__gte=0, status="running", attempt=1)
            .exclude(lease_owner="(reserved)")
            .exists()
        ),
        60,
    )
    time.sleep(0.3)
    os.kill(worker.pid, signal.SIGTERM)
    asked = time.monotonic()
    worker.wait(timeout=30)
    stopped = time.monotonic() - asked
    # The step in hand (1 s) and the worker's own exit; the rest of the backlog (7 s) went
    # back to the pool.
    assert stopped < 4.0, (stopped, live.logs())
    live.worker("drain2", concurrency=1, queues="default,limited")
    done = wait_until(lambda: get_run(run.pk) if get_run(run.pk).is_terminal else None, 90)
    assert done.status == "succeeded", (done.error, live.logs())
    attempts = list(Step.objects.filter(run=run, branch__gte=0).values_list("attempt", flat=True))
    assert attempts == [1] * 8, attempts  # none was cut off and run again
