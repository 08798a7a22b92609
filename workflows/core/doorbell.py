"""Ringing for work. A message only says "look at run X" or "try step Y"; the tables say why.

Messages are sent after the transaction that made the work runnable commits. If sending fails
(broker down, flushed), nothing is lost: the sweep finds the work from the tables and rings again.

On a Redis broker a message is one LPUSH of the message Celery would have sent
(``workflows.core.broker``: a tenth of ``send_task``'s CPU, which mattered for API starts, W7);
on any other broker it goes through Celery.
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
from django.db import connection, transaction

from workflows.core import broker, clock, transitions
from workflows.core.pools import queue_for

# The doorbell names its tasks instead of importing them: ``workflows.core.tasks`` imports the
# executor, which rings. A message is a task name and ids, nothing more.
ADVANCE = "workflows.advance"
ADVANCE_MANY = "workflows.advance_many"
EXECUTE_STEP = "workflows.execute_step"
EXECUTE_STEPS = "workflows.execute_steps"

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
    the copies. (Celery's consuming worker compares the expiry with its host's clock: the workers'
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


def _send(messages: list[tuple[str, list[Any], str]], fresh: bool = False) -> None:
    """Queue ``(task, args, queue)`` messages. On Redis one LPUSH each
    (``workflows.core.broker``): fresh doorbells at the work priority Celery's routes give
    them, overdue ones with their priority and expiry. Any other broker: through Celery, over
    one producer. ``fresh`` ignores an ``overdue()`` around the caller. Raises when the broker
    fails (``broker.BrokerUnavailable`` for a Redis that failed now or moments ago: not handed
    to Celery, which would wait on the same Redis; the sweep's overdue rings waited its 30 s
    there); the callers log and move on."""
    options = {} if fresh else _options()
    priority = int(options.get("priority", _work_priority()))
    if broker.publish(messages, priority=priority, expires=options.get("expires")):
        return
    with current_app.producer_or_acquire() as producer:
        for name, args, queue in messages:
            current_app.send_task(name, args, queue=queue, producer=producer, **options)


def _work_priority() -> int:
    """The priority Celery's task routes give a doorbell (``"*"`` in CELERY_TASK_ROUTES)."""
    routes = getattr(settings, "CELERY_TASK_ROUTES", None) or {}
    return int((routes.get("*") or {}).get("priority") or 0)


def send_tasks(messages: list[tuple[str, list[Any], str]]) -> None:
    """Queue a burst of ``(task, args, queue)`` messages for an app's own tasks the way the
    engine rings (one pipeline of LPUSHes on Redis, else Celery over one producer). Raises when
    the broker fails; the caller logs, and the tables let its sweep ring again."""
    _send(messages, fresh=True)


def _not_sent(what: str, exc: Exception) -> None:
    """A doorbell that did not leave: the sweep rings again from the tables. A broker known to
    be down is one line each (an outage at ten starts a second logged 1,800 lines a second of
    tracebacks); anything else, with its traceback."""
    if isinstance(exc, broker.BrokerUnavailable):
        log.warning("could not %s; the sweep will: %s", what, exc)
    else:
        log.warning("could not %s; the sweep will", what, exc_info=exc)


def send_advance(run_id: Any, generation: int) -> None:
    try:
        _send([(ADVANCE, [str(run_id), generation], "default")])
    except Exception as exc:  # The sweep rings again from the tables.
        _not_sent(f"ring for run {run_id}", exc)


def send_advance_many(items: list[tuple[Any, int]]) -> None:
    """One doorbell for a burst of runs (``workflows.advance_many``)."""
    try:
        _send([(ADVANCE_MANY, [[[str(pk), gen] for pk, gen in items]], "default")])
    except Exception as exc:
        _not_sent(f"ring for {len(items)} runs", exc)


def send_step(step_id: int, queue: str) -> None:
    try:
        _send([(EXECUTE_STEP, [step_id], queue)])
    except Exception as exc:
        _not_sent(f"dispatch step {step_id}", exc)


def send_steps(items: list[tuple[int, str]]) -> None:
    """Dispatch many steps in one round trip (a fan-out's first branches)."""
    try:
        _send([(EXECUTE_STEP, [step_id], queue) for step_id, queue in items])
    except Exception as exc:
        _not_sent(f"dispatch {len(items)} steps", exc)


def send_batches(batches: list[tuple[list[int], str]]) -> None:
    """Ring for batches of steps (``workflows.execute_steps``), one message per batch, over one
    broker connection; a batch of one is an ordinary ``workflows.execute_step``."""
    try:
        # Always fresh: a batch rings for slots just reserved, which must not expire unrun
        # (their reservation would wait for the sweep's reclaim).
        _send(
            [
                (EXECUTE_STEP, [ids[0]], queue)
                if len(ids) == 1
                else (EXECUTE_STEPS, [ids, queue], queue)
                for ids, queue in batches
            ],
            fresh=True,
        )
    except Exception as exc:
        _not_sent(f"dispatch {len(batches)} batches", exc)


def batch_size() -> int:
    """Steps per batch doorbell: ``SLUICE_BRANCH_BATCH`` on PostgreSQL. On SQLite (the
    embedded default) one per message: its writers serialize, so threads would only queue."""
    if connection.vendor != "postgresql":
        return 1
    return max(1, int(settings.SLUICE_BRANCH_BATCH))


def dispatch_batches_on_commit(rows: list[Any]) -> None:
    """Ring for reserved slots of a limited pool in batches (``workflows.core.branches``)."""
    size = batch_size()
    if size == 1:
        dispatch_many_on_commit(rows)
        return
    by_queue: dict[str, list[int]] = {}
    for row in rows:
        by_queue.setdefault(queue_for(row.pool), []).append(row.pk)
    batches = [
        (ids[i : i + size], queue)
        for queue, ids in by_queue.items()
        for i in range(0, len(ids), size)
    ]
    if batches:
        transaction.on_commit(lambda: send_batches(batches))


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
    now = now or clock.now()
    generation = transitions.mark_runnable(run_id, now)
    if generation is not None:
        ring_on_commit(run_id, generation)
    return generation is not None
