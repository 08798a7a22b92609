"""Celery tasks: thin adapters over the executor and the sweep. Messages are doorbells."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workflows.core.executor import advance as advance_run
from workflows.core.executor import advance_many as advance_runs
from workflows.core.executor import execute_step as run_step
from workflows.core.executor import execute_steps as run_steps
from workflows.core.outbox import deliver_due
from workflows.core.sweeper import prune as run_prune
from workflows.core.sweeper import sweep as run_sweep


@shared_task(name="workflows.advance", ignore_result=True)
def advance(run_id: str, generation: int) -> str:

    return advance_run(run_id, generation)


@shared_task(name="workflows.advance_many", ignore_result=True)
def advance_many(runs: list[Any]) -> dict[str, int]:
    """One doorbell for a burst of runs: ``[[run_id, generation], ...]``."""

    return advance_runs([(run_id, generation) for run_id, generation in runs])


@shared_task(name="workflows.execute_step", ignore_result=True)
def execute_step(step_id: int) -> int:

    return run_step(step_id)


@shared_task(name="workflows.execute_steps", ignore_result=True)
def execute_steps(step_ids: list[int], queue: str = "default") -> int:
    """One doorbell for a batch of a fan-out's reserved slots (``workflows.core.branches``)."""

    return run_steps(step_ids, queue)


@shared_task(name="workflows.sweep", ignore_result=True)
def sweep() -> dict[str, Any]:

    return run_sweep()


@shared_task(name="workflows.deliver_outbox", ignore_result=True)
def deliver_outbox() -> int:

    return deliver_due()


@shared_task(name="workflows.prune", ignore_result=True)
def prune() -> int:

    return run_prune()
