"""Celery tasks: thin adapters over the executor and the sweep. Messages are doorbells.

The doorbell tasks and the sweep wait out a database that went away under them (a restart, a
failover) instead of failing: see ``_patiently``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from workflows.core import clock, transitions
from workflows.core.executor import advance as advance_run
from workflows.core.executor import advance_many as advance_runs
from workflows.core.executor import execute_step as run_step
from workflows.core.executor import execute_steps as run_steps
from workflows.core.leases import owner_id
from workflows.core.outbox import deliver_due
from workflows.core.sweeper import prune as run_prune
from workflows.core.sweeper import sweep as run_sweep

log = logging.getLogger(__name__)


def _connection_lost() -> bool:
    """The error came from a connection that is gone (or never opened), not from a query."""
    raw = connection.connection
    return raw is None or bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))


def _database_back(deadline: float) -> bool:
    """Reconnect until the database answers (True) or ``deadline`` passes (False)."""
    delay = 0.05
    while True:
        connection.close()
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(0.5, delay * 2)


def _patiently[T](work: Callable[[], T], let_go: Callable[[], None] | None = None) -> T:
    """Run ``work``; when the database connection breaks under it, wait for the database (up
    to SLUICE_DATABASE_WAIT_SECONDS) and run it again.

    Failing instead would drop the message: during an outage a worker consumes and drops every
    doorbell queued, and each piece of work then waits for the doorbell grace and a sweep after
    the database is back. Waiting keeps the messages queued and the worker's slot ready the
    moment the database answers. Running again is safe: every step of the work is a fenced
    compare-and-swap. ``let_go`` first frees what the broken attempt held under this thread's
    owner id (it could not release it with the database down), so the retry can take it.
    """
    deadline = time.monotonic() + float(settings.SLUICE_DATABASE_WAIT_SECONDS)
    broke = False
    while True:
        try:
            if broke and let_go is not None:
                let_go()
            return work()
        except (OperationalError, InterfaceError):
            if not _connection_lost():
                raise
            log.warning("the database connection broke; waiting for the database")
            if not _database_back(deadline):
                raise
            broke = True


def _release(items: list[tuple[Any, int]]) -> Callable[[], None]:
    def let_go() -> None:
        owner, now = owner_id(), clock.now()
        for run_id, generation in items:
            transitions.release(run_id, owner, generation, now)

    return let_go


@shared_task(name="workflows.advance", ignore_result=True)
def advance(run_id: str, generation: int) -> str:

    return _patiently(lambda: advance_run(run_id, generation), _release([(run_id, generation)]))


@shared_task(name="workflows.advance_many", ignore_result=True)
def advance_many(runs: list[Any]) -> dict[str, int]:
    """One doorbell for a burst of runs: ``[[run_id, generation], ...]``."""
    items = [(run_id, generation) for run_id, generation in runs]
    return _patiently(lambda: advance_runs(items), _release(items))


@shared_task(name="workflows.execute_step", ignore_result=True)
def execute_step(step_id: int) -> int:
    # A step claimed before the break stays running under its lease (its claim was counted as
    # an attempt): the sweep reclaims it when the lease runs out, as after any worker loss.
    return _patiently(lambda: run_step(step_id))


@shared_task(name="workflows.execute_steps", ignore_result=True)
def execute_steps(step_ids: list[int], queue: str = "default") -> int:
    """One doorbell for a batch of a fan-out's reserved slots (``workflows.core.branches``)."""
    return _patiently(lambda: run_steps(step_ids, queue))


@shared_task(name="workflows.sweep", ignore_result=True)
def sweep() -> dict[str, Any]:

    return _patiently(run_sweep)


@shared_task(name="workflows.deliver_outbox", ignore_result=True)
def deliver_outbox() -> int:

    return deliver_due()


@shared_task(name="workflows.prune", ignore_result=True)
def prune() -> int:

    return run_prune()
