"""Batch doorbells: a fan-out's reserved slots rung for several per message, and the worker
that takes one running them at once in branch threads (workflows/core/branches.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core import branches
from workflows.core.executor import execute_steps
from workflows.core.leases import _held
from workflows.models import Pool, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

THREADS: list[str] = []


@step(pool="batched")
def where(i: int) -> int:
    THREADS.append(threading.current_thread().name)
    time.sleep(0.05)
    return i * 10


@workflow(name="test.batched", max_parallel=50)
def batched(ctx: Any, n: int = 6) -> list[int]:
    return ctx.map(where, list(range(n)))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    from workflows.core.pools import clear_cache

    clear_cache()
    THREADS.clear()


def test_reserved_slots_are_rung_for_in_batches_on_postgresql(
    bell: Bell, monkeypatch: pytest.MonkeyPatch
) -> None:
    Pool.objects.create(name="batched", max_concurrency=7)
    sent: list[tuple[list[int], str]] = []
    monkeypatch.setattr("workflows.core.doorbell.send_batches", sent.extend)
    with override_settings(SLUICE_BRANCH_BATCH=3):
        run = start(batched, {"n": 9})
        bell.drain(limit=1)
    reserved = list(
        Step.objects.filter(run=run, branch__gte=0, status="running")
        .order_by("branch")
        .values_list("pk", flat=True)
    )
    assert len(reserved) == 7  # the pool's free slots; two branches wait for a hand-over
    if connection.vendor == "postgresql":
        assert sent == [
            (reserved[0:3], "default"),
            (reserved[3:6], "default"),
            (reserved[6:], "default"),
        ]
        assert not [m for m in bell.sent if m[0] == "step"]
    else:  # SQLite: one message per branch (its writers serialize; threads would only queue)
        assert sent == []
        assert [m[1][0] for m in bell.sent if m[0] == "step"] == reserved


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_batch_runs_its_branches_at_once_in_branch_threads(bell: Bell) -> None:
    Pool.objects.create(name="batched", max_concurrency=4)
    run = start(batched, {"n": 6})
    bell.drain(limit=1)
    bell.messages.clear()  # the batch's steps, delivered below as one batch instead
    reserved = list(
        Step.objects.filter(run=run, branch__gte=0, status="running")
        .order_by("branch")
        .values_list("pk", flat=True)
    )
    assert len(reserved) == 4
    assert execute_steps(reserved, "default") == 6  # four slots, two handed over
    assert not _held  # every lease it held, under each job's owner, was let go
    run = get_run(run.pk)
    assert run.status == "succeeded" and run.output == [0, 10, 20, 30, 40, 50]
    assert sum(name.startswith("sluice-branch") for name in THREADS) >= 3
    rows = Step.objects.filter(run=run, branch__gte=0)
    assert all(r.attempt == 1 and r.status == "succeeded" for r in rows)
    assert not [m for m in bell.sent if m[0] == "advance" and m[1][0] == str(run.pk)][1:]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_batch_rings_alone_for_branches_no_thread_is_free_for(bell: Bell) -> None:
    Pool.objects.create(name="batched", max_concurrency=3)
    run = start(batched, {"n": 3})
    bell.drain(limit=1)
    bell.messages.clear()
    reserved = list(
        Step.objects.filter(run=run, branch__gte=0).order_by("branch").values_list("pk", flat=True)
    )
    with override_settings(SLUICE_BRANCH_THREADS=1):
        executed = execute_steps(reserved, "default")
    assert executed == 2  # the first here, the second in the one branch thread
    assert [m for m in bell.messages] == [("step", (reserved[2],))]
    bell.drain()
    assert get_run(run.pk).output == [0, 10, 20]


def test_branch_threads_never_queue_behind_a_busy_one() -> None:
    release = threading.Event()

    def hold() -> int:
        release.wait(5)
        return 1

    with override_settings(SLUICE_BRANCH_THREADS=2):
        assert branches.reserve(3) == 2
        futures = [branches.start(hold), branches.start(hold)]
        assert branches.reserve(1) == 0  # both busy: nothing queues behind them
        release.set()
        assert sum(f.result(timeout=5) for f in futures) == 2
        assert branches.reserve(5) == 2  # free again
        branches.unreserve(2)
