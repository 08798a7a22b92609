"""The workflows ``make chaos`` runs (imported by the chaos driver and its worker processes).

Every step execution is appended to the file named by ``SLUICE_CHAOS_LOG`` (one line per
attempt, written before the step returns), and ``on_complete`` writes an ``Event`` row in the
transaction that ends the run: the driver counts both afterwards to find steps that ran again
after their checkpoint and runs that ended twice.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from workflows import RetryPolicy, step, workflow
from workflows.core.usage import current_step

ON_COMPLETE_EVENT = "chaos.on_complete"


def _log_execution() -> None:
    path = os.environ.get("SLUICE_CHAOS_LOG")
    scope = current_step()
    if not path or scope is None:
        return
    line = f"{scope.run_id} {scope.step_id} {scope.attempt}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write(2) of a short line under O_APPEND: never interleaved
    finally:
        os.close(fd)


# Generous attempts: a step may lose several workers to SIGKILL in one chaos run, and a run
# that fails for attempts would hide what the chaos is meant to find (loss, duplicates).
RETRY = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=2.0)


@step(retry=RETRY)
def nap(tag: str, seconds: float) -> str:
    """Work that takes a while (an LLM call, say); logged when it is done."""
    time.sleep(seconds)
    _log_execution()
    return tag


@workflow(name="chaos.pipeline", max_parallel=4)
def pipeline(
    ctx: Any, width: int = 2, seconds: float = 0.2, pause: float = 0.0, gate: bool = False
) -> dict[str, Any]:
    """A step, a fan-out of ``width`` steps, a durable sleep, an optional review gate with a
    short timeout (so that it expires while the faults happen), a last step."""
    first = ctx.run(nap, "first", seconds)
    calls = [ctx.call(nap, f"part{i}", seconds) for i in range(width)]
    parts = ctx.parallel(calls) if calls else []
    if pause:
        ctx.sleep(timedelta(seconds=pause))
    outcome = None
    if gate:
        outcome = ctx.review(
            "Chaos check",
            "Approve or reject; it approves itself after a few seconds.",
            {"parts": parts},
            timeout=timedelta(seconds=3),
            on_timeout="approve",
        ).outcome
    last = ctx.run(nap, "last", seconds)
    return {"first": first, "parts": parts, "gate": outcome, "last": last}


def on_done(run: Any) -> None:
    """on_complete: a row written in the transaction that ends the run (counted per
    generation by the driver: two rows for one generation is a run that ended twice)."""
    from workflows.core.models import Event

    Event.objects.create(
        run_id=run.pk,
        name=ON_COMPLETE_EVENT,
        payload={"generation": run.generation, "status": run.status},
    )


def _install_trace() -> None:
    """With SLUICE_CHAOS_TRACE set, every task a worker runs appends "start" and "end" lines
    (wall time, pid, task, arguments, result) to that file: the timeline the driver reads to
    say where the drain after the last fault went."""
    path = os.environ.get("SLUICE_CHAOS_TRACE")
    if not path:
        return
    import json

    from celery.signals import task_postrun, task_prerun

    def write(*fields: Any) -> None:
        line = (json.dumps([time.time(), os.getpid(), *fields], default=str) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    @task_prerun.connect(weak=False)
    def _start(task: Any = None, args: Any = None, **kwargs: Any) -> None:
        write("start", getattr(task, "name", "?"), args)

    @task_postrun.connect(weak=False)
    def _end(
        task: Any = None, args: Any = None, retval: Any = None, state: Any = None, **kwargs: Any
    ) -> None:
        write("end", getattr(task, "name", "?"), args, retval, state)


_install_trace()
