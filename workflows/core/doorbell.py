"""Ringing for work. A message only says "look at run X" or "try step Y"; the tables say why.

Messages are sent after the transaction that made the work runnable commits. If sending fails
(broker down, flushed), nothing is lost: the sweep finds the work from the tables and rings again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from workflows.core import transitions
from workflows.core.pools import queue_for

# The doorbell names its tasks instead of importing them: ``workflows.core.tasks`` imports the
# executor, which rings. A message is a task name and ids, nothing more.
ADVANCE = "workflows.advance"
ADVANCE_MANY = "workflows.advance_many"
EXECUTE_STEP = "workflows.execute_step"

log = logging.getLogger(__name__)

# The send options of doorbells rung inside ``overdue()`` (None outside).
_overdue: ContextVar[dict[str, Any] | None] = ContextVar("sluice_overdue", default=None)


def grace() -> timedelta:
    return timedelta(seconds=float(settings.SLUICE_DOORBELL_GRACE_SECONDS))


@contextmanager
def overdue(expires: float | None = None) -> Iterator[None]:
    """Doorbells rung inside ring for work that is already due or late: a dead worker's, a
    lost message's, a timer's (the sweep rings inside). They go at SLUICE_OVERDUE_PRIORITY,
    ahead of the fresh doorbells a backlog is made of, so the work a fault delayed is not
    delayed again behind everything rung since.

    ``expires`` (seconds): a doorbell nobody took by then is dropped unrun. For rings that may
    repeat one still queued (the sweep cannot tell a lost doorbell from one waiting behind a
    backlog): the sweep rings again after the grace anyway, and without an expiry every pass
    would add a copy while the backlog lasts, the backlog would grow with them, and so would
    the copies. (The consuming worker compares the expiry with its own clock: the workers'
    clocks must agree to well within the expiry, as NTP keeps them.)"""
    options: dict[str, Any] = {}
    priority = getattr(settings, "SLUICE_OVERDUE_PRIORITY", None)
    if priority is not None:
        options["priority"] = int(priority)
    if expires is not None:
        options["expires"] = expires
    token = _overdue.set(options)
    try:
        yield
    finally:
        _overdue.reset(token)


def _options() -> dict[str, Any]:
    return dict(_overdue.get() or {})


def on_commit(send: Callable[[], None]) -> None:
    """``send`` when the transaction commits, as overdue as the code that asked for it."""
    late = _overdue.get()

    def call() -> None:
        token = _overdue.set(late)
        try:
            send()
        finally:
            _overdue.reset(token)

    transaction.on_commit(call)


def send_advance(run_id: Any, generation: int) -> None:
    try:
        current_app.send_task(ADVANCE, (str(run_id), generation), queue="default", **_options())
    except Exception:  # The sweep rings again from the tables.
        log.warning("could not ring for run %s; the sweep will", run_id, exc_info=True)


def send_advance_many(items: list[tuple[Any, int]]) -> None:
    """One doorbell for a burst of runs (``workflows.advance_many``)."""
    try:
        current_app.send_task(
            ADVANCE_MANY, ([[str(pk), gen] for pk, gen in items],), queue="default", **_options()
        )
    except Exception:
        log.warning("could not ring for %s runs; the sweep will", len(items), exc_info=True)


def send_step(step_id: int, queue: str) -> None:
    try:
        current_app.send_task(EXECUTE_STEP, (step_id,), queue=queue, **_options())
    except Exception:
        log.warning("could not dispatch step %s; the sweep will", step_id, exc_info=True)


def send_steps(items: list[tuple[int, str]]) -> None:
    """Dispatch many steps over one broker connection (a fan-out's first branches)."""
    options = _options()
    try:
        with current_app.producer_or_acquire() as producer:
            for step_id, queue in items:
                current_app.send_task(
                    EXECUTE_STEP, (step_id,), queue=queue, producer=producer, **options
                )
    except Exception:
        log.warning("could not dispatch %s steps; the sweep will", len(items), exc_info=True)


def dispatch_many_on_commit(rows: list[Any]) -> None:
    items = [(row.pk, queue_for(row.pool)) for row in rows]
    if items:
        on_commit(lambda: send_steps(items))


def ring_on_commit(run_id: Any, generation: int) -> None:
    on_commit(lambda: send_advance(run_id, generation))


def dispatch_on_commit(step_id: int, pool: str) -> None:
    queue = queue_for(pool)
    on_commit(lambda: send_step(step_id, queue))


def request_wake(run_id: Any, now: datetime | None = None) -> bool:
    """Mark an active run runnable and ring for it when the transaction commits.

    Call inside the transaction that made it runnable. If a worker holds the run right now,
    the mark makes it replay again instead of suspending, so no wake-up is lost.
    """
    now = now or timezone.now()
    generation = transitions.mark_runnable(run_id, now)
    if generation is not None:
        ring_on_commit(run_id, generation)
    return generation is not None
