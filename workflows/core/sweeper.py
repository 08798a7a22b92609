"""The sweep: the beat-driven pass that turns deadlines in columns into work.

Run every few seconds by ``celery beat`` (``workflows.sweep``). Idempotent: two beats by
mistake are harmless, because every change below is a compare-and-swap and batches skip rows
another sweeper holds. Procedure:

1. Fire due timers and wait timeouts (waiting steps whose ``wake_at`` passed, any kind) and
   wake runs.
2. Wake runs whose inline step finished its retry backoff; requeue branches likewise.
3. Reclaim steps whose worker lease expired (the worker died): requeue them, or fail them
   once their attempt budget is spent.
4. Reclaim runs whose advancing worker died (run lease expired) and ring for them.
5. Ring again for runs and steps whose doorbell went unanswered (lost or flushed messages).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from workflows.core import clock, doorbell, instrument, transitions
from workflows.core.calls import worker_lost
from workflows.core.doorbell import dispatch_on_commit, grace, request_wake, ring_on_commit
from workflows.core.executor import step_finished
from workflows.core.leases import owner_id
from workflows.core.models import (
    ACTIVE_RUN,
    LEASED_RUN,
    TERMINAL_RUN,
    Lease,
    Outbox,
    OutboxStatus,
    Run,
    RunStatus,
    Step,
    StepStatus,
)
from workflows.core.pools import RESERVED
from workflows.core.signals import runs_pruning
from workflows.core.storage import storage

log = logging.getLogger(__name__)

BATCH = 500


def _lock(qs: QuerySet[Any]) -> QuerySet[Any]:
    if connection.features.has_select_for_update_skip_locked:
        return qs.select_for_update(skip_locked=True, of=("self",))
    return qs


def _batches(qs: QuerySet[Any], handle: Callable[[Any], bool], limit: int = 20) -> int:
    """Handle rows of ``qs`` in locked batches until none are left; a broken row is logged
    and skipped, never retried forever within one sweep."""
    done = 0
    seen: set[Any] = set()
    for _ in range(limit):
        with transaction.atomic():
            rows = list(_lock(qs.exclude(pk__in=seen))[:BATCH])
            if not rows:
                break
            for row in rows:
                seen.add(row.pk)
                try:
                    with transaction.atomic():
                        done += bool(handle(row))
                except Exception:
                    log.exception("sweep could not handle %s %s", type(row).__name__, row.pk)
        if len(rows) < BATCH:
            break
    return done


def fire_timers(now: Any) -> int:
    """Every waiting row with a deadline that passed: a sleep ends; any other wait (an event,
    a plug-in's ``ctx.wait_for(..., timeout=)``) goes on with its journaled default, marked
    timed out. Fan-out groups and child runs never carry a deadline."""
    due = (
        Step.objects.filter(status=StepStatus.WAITING, wake_at__lte=now, superseded=False)
        .exclude(kind__in=["parallel", "child"])
        .order_by("wake_at")
    )

    def fire(row: Step) -> bool:
        if transitions.fire_timer(row, now):
            request_wake(row.run_id, now)
            return True
        return False

    return _batches(due, fire)


def retry_due(now: Any) -> int:
    due = Step.objects.filter(status=StepStatus.RETRYING, wake_at__lte=now, superseded=False)

    def wake(row: Step) -> bool:
        if row.branch >= 0:
            if transitions.retry_due(row.pk, now + grace()):
                dispatch_on_commit(row.pk, row.pool)
                return True
            return False
        # An inline step: the advancing worker re-executes it on replay. A compensating run
        # parks without changing status: nobody holding its lease says it is parked.
        return bool(
            Run.objects.filter(pk=row.run_id, wake_requested_at__isnull=True)
            .filter(
                Q(status=RunStatus.SUSPENDED) | Q(status=RunStatus.COMPENSATING, lease_owner="")
            )
            .exists()
            and request_wake(row.run_id, now)
        )

    return _batches(due, wake)


def reclaim_steps(now: Any) -> int:
    """Steps running under a dead worker's lease. Inline steps of a running run are left to
    the run's own recovery (step 4), which replays and counts the attempt."""
    expired = Step.objects.filter(
        status=StepStatus.RUNNING, lease_expires_at__lt=now, superseded=False
    ).filter(Q(branch__gte=0) | ~Q(run__status=RunStatus.RUNNING))

    def reclaim(row: Step) -> bool:
        def requeue(**fields: Any) -> bool:
            pending = {
                "status": StepStatus.PENDING,
                "lease_owner": "",
                "lease_expires_at": None,
                "wake_at": now + grace(),
            }
            if transitions.reclaim_step(row, {**pending, **fields}):
                dispatch_on_commit(row.pk, row.pool)
                return True
            return False

        if row.lease_owner == RESERVED:
            # A slot reserved at fan-out whose doorbell was lost: nothing ran, nothing counts.
            return requeue()
        if row.attempt >= row.max_attempts:
            failed = {
                "status": StepStatus.FAILED,
                "error": worker_lost(row, exhausted=True),
                "finished_at": now,
                "lease_owner": "",
                "lease_expires_at": None,
            }
            if transitions.reclaim_step(row, failed):
                step_finished(row, now)
                return True
            return False
        return requeue(error=worker_lost(row, exhausted=False))

    return _batches(expired, reclaim)


def reclaim_runs(now: Any) -> int:
    expired = Run.objects.filter(status__in=LEASED_RUN, lease_expires_at__lt=now)

    def reclaim(run: Run) -> bool:
        if transitions.reclaim_run(run, now):
            ring_on_commit(run.pk, run.generation)
            return True
        return False

    return _batches(expired, reclaim)


RING_CHUNK = 50
RING_LIMIT = 2000


def ring_lost(now: Any) -> int:
    """Ring again for work whose doorbell went unanswered for a grace period.

    Runs are rung in ``workflows.advance_many`` messages of RING_CHUNK (a flushed broker can
    strand thousands at once), at most RING_LIMIT per pass: a backlog that workers are still
    chewing through is not re-rung wholesale every few seconds. These doorbells expire after
    two graces: one merely queued behind a backlog is not lost, and copies of it must not pile
    up (see ``doorbell.overdue``).
    """
    cutoff = now - grace()
    with doorbell.overdue(expires=2 * grace().total_seconds()), transaction.atomic():
        stale = list(
            _lock(
                Run.objects.filter(status__in=ACTIVE_RUN, wake_requested_at__lte=cutoff)
                .filter(Q(lease_owner="") | Q(lease_expires_at__lt=now))
                .order_by("wake_requested_at")
            ).values_list("pk", "generation")[:RING_LIMIT]
        )
        if stale:
            Run.objects.filter(
                pk__in=[pk for pk, _ in stale], wake_requested_at__lte=cutoff
            ).update(wake_requested_at=now)
            chunks = [stale[i : i + RING_CHUNK] for i in range(0, len(stale), RING_CHUNK)]
            doorbell.on_commit(lambda: _send_chunks(chunks))
    rung = len(stale)

    steps = (
        Step.objects.filter(
            status=StepStatus.PENDING, held=False, superseded=False, wake_at__lte=now
        )
        .exclude(run__status__in=TERMINAL_RUN)
        .order_by("id")
    )

    def ring_step(row: Step) -> bool:
        if transitions.ring_again(row, now + grace()):
            dispatch_on_commit(row.pk, row.pool)
            return True
        return False

    with doorbell.overdue(expires=2 * grace().total_seconds()):
        return rung + _batches(steps, ring_step)


def _send_chunks(chunks: list[list[tuple[Any, int]]]) -> None:
    for chunk in chunks:
        if len(chunk) == 1:
            doorbell.send_advance(*chunk[0])
        else:
            doorbell.send_advance_many(chunk)


def sweep() -> dict[str, int]:
    # Every deadline it judges was written on the database's clock (``clock``): this
    # process's offset to it, measured again at most once a minute.
    clock.refresh()
    now = clock.now()
    # Everything the sweep rings for is due or late: it goes ahead of the fresh doorbells.
    with doorbell.overdue():
        result = {
            "timers": fire_timers(now),
            "retries": retry_due(now),
            "steps_reclaimed": reclaim_steps(now),
            "runs_reclaimed": reclaim_runs(now),
            "rung": ring_lost(now),
        }
    # Metrics count re-rung doorbells and reclaimed leases; /readyz reads the last pass.
    instrument.emit("sweep_finished", result=result, at=now)
    return result


def prune(now: Any = None) -> int:
    """Delete finished runs older than SLUICE_RETENTION_DAYS, journal included, in batches of
    SLUICE_PRUNE_BATCH runs (one short transaction each, so the workers beside it are never
    held up for long), outbox rows delivered or dead for SLUICE_OUTBOX_RETENTION_DAYS, and
    expired web sessions. Returns the runs deleted.

    The prune is background work: it works SLUICE_PRUNE_DUTY of its time and rests the rest
    (after a batch that took t seconds it sleeps t × (1 / duty − 1)), as autovacuum's cost delay
    paces it, so a large backlog (the first prune after retention is lowered, say) leaves the
    database's and the machine's CPU to the runs going on beside it.

    One at a time, for at most SLUICE_PRUNE_MAX_SECONDS: the beat sends one every hour, and a
    prune that drained a large backlog in one go held its worker slot for hours while the next
    hours' prunes ran beside it (two of them filled the default queue's two slots, doorbells,
    sweep and outbox waiting behind). Each takes the ``prune`` lease (a row, compare-and-swap:
    PgBouncer-safe) or, held, returns 0 at once, saying so in the log; past its budget it stops
    and the next hour's prune goes on where it stopped.

    Each batch first sends ``runs_pruning`` in its transaction, so apps keep or archive what
    must outlive a run (a gate's audit trail, the ops charts' hours) in the same commit as the
    delete; then ``Storage.prune`` deletes the runs and what refers to them set-based."""
    owner = f"{owner_id()}:{uuid.uuid4().hex[:8]}"
    held = take_lease(PRUNE_LEASE, owner)
    if held is not None:
        log.info("prune: another prune (%s) holds the lease until %s; this one returns", *held)
        return 0
    try:
        return _prune_held(now, owner)
    finally:
        release_lease(PRUNE_LEASE, owner)


def _prune_held(now: Any, owner: str) -> int:
    now = now or clock.now()
    cutoff = retention_cutoff(now, "SLUICE_RETENTION_DAYS")
    store = storage()
    duty = min(1.0, max(0.05, float(settings.SLUICE_PRUNE_DUTY)))
    budget = prune_budget()
    begun = _clock()
    deleted = 0
    try:
        while cutoff is not None:
            began = _clock()
            n = store.prune(cutoff, prune_batch(), before_delete=_pruning)
            if not n:
                break
            deleted += n
            ended = _clock()
            if not renew_lease(PRUNE_LEASE, owner):
                log.warning("prune: lost its lease after %d runs; it stops", deleted)
                break
            rest = (ended - began) * (1 / duty - 1) if duty < 1.0 else 0.0
            if ended + rest - begun >= budget:
                log.info(
                    "prune: %d runs deleted in its %g s (SLUICE_PRUNE_MAX_SECONDS); "
                    "the next prune goes on",
                    deleted,
                    budget,
                )
                break
            if rest:
                _rest(rest)
    finally:
        # The outbox has its own retention: a failing run prune must not stop it growing, nor
        # a backlog of runs that spends the whole budget every hour (a tenth of it at least).
        until = max(begun + budget, _clock() + budget / 10)
        try:
            prune_outbox(now, until=until)
        finally:
            clear_sessions(until=until)
    return deleted


# The single-instance lease of the prune: taken for LEASE_SECONDS and renewed after every batch
# (a batch and its rest take seconds), so the lease of a prune whose worker died runs out well
# before the next hour's.
PRUNE_LEASE = "prune"
LEASE_SECONDS = 600.0
_FREE = datetime(2000, 1, 1, tzinfo=UTC)


def take_lease(name: str, owner: str) -> tuple[str, datetime] | None:
    """Take lease ``name`` for ``owner`` if it is free or ran out: None when taken, else who
    holds it and until when. One INSERT … ON CONFLICT DO NOTHING (the row, once) and one
    conditional UPDATE, each in autocommit."""
    now = clock.now()
    Lease.objects.bulk_create([Lease(name=name, owner="", expires_at=_FREE)], ignore_conflicts=True)
    until = now + timedelta(seconds=LEASE_SECONDS)
    if Lease.objects.filter(name=name, expires_at__lte=now).update(owner=owner, expires_at=until):
        return None
    found = Lease.objects.filter(name=name).values_list("owner", "expires_at").first()
    return found or ("?", now)


def renew_lease(name: str, owner: str) -> bool:
    """Push ``owner``'s lease forward; False when it is no longer ``owner``'s (it ran out and
    another prune took it)."""
    until = clock.now() + timedelta(seconds=LEASE_SECONDS)
    return bool(Lease.objects.filter(name=name, owner=owner).update(expires_at=until))


def release_lease(name: str, owner: str) -> None:
    Lease.objects.filter(name=name, owner=owner).update(owner="", expires_at=clock.now())


def prune_budget() -> float:
    """``SLUICE_PRUNE_MAX_SECONDS``: how long one prune task works on the runs (its rests
    included), at least a second; ``inf`` drains the backlog in one task."""
    raw = getattr(settings, "SLUICE_PRUNE_MAX_SECONDS", 300.0)
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return 300.0
    return 300.0 if math.isnan(seconds) else max(1.0, seconds)


def retention_cutoff(now: datetime, name: str) -> datetime | None:
    """``now`` minus the days of retention setting ``name``; None (keep everything) for a
    retention longer than the calendar holds (a huge number or ``inf``: "keep forever"). A
    value that is not a number of days, or negative, also keeps everything, with an error
    logged: a typo must not delete history."""
    raw = getattr(settings, name)
    try:
        days = float(raw)
    except (TypeError, ValueError):
        days = -1.0
    if math.isnan(days) or days < 0:
        log.error("%s=%r is not a number of days; nothing is pruned", name, raw)
        return None
    try:
        return now - timedelta(days=days)
    except OverflowError:
        return None


def prune_batch() -> int:
    """``SLUICE_PRUNE_BATCH``, at least 1 (0 would prune nothing, silently)."""
    return max(1, int(settings.SLUICE_PRUNE_BATCH))


# The prune's clock and its rest (tests replace them).
_clock = time.monotonic
_rest = time.sleep


def _pruning(run_ids: list[Any]) -> None:
    runs_pruning.send(sender=Run, run_ids=run_ids)


def prune_outbox(now: Any = None, until: float | None = None) -> int:
    """Delete outbox rows delivered (by ``delivered_at``) or dead (by ``created_at``: a dead row
    gave up after its attempts) more than SLUICE_OUTBOX_RETENTION_DAYS ago, in batches (until
    ``_clock()`` reaches ``until``, if given: the next prune goes on).
    Pending rows stay, however old: they still have to leave."""
    now = now or clock.now()
    cutoff = retention_cutoff(now, "SLUICE_OUTBOX_RETENTION_DAYS")
    if cutoff is None:
        return 0
    done = Q(status=OutboxStatus.DELIVERED, delivered_at__lt=cutoff) | Q(
        status=OutboxStatus.DEAD, created_at__lt=cutoff
    )
    deleted = 0
    while True:
        ids = list(Outbox.objects.filter(done).values_list("pk", flat=True)[: prune_batch()])
        if not ids:
            return deleted
        # The status again: a row is pruned only in the state it was selected in.
        _, per_model = Outbox.objects.filter(done, pk__in=ids).delete()
        deleted += per_model.get(Outbox._meta.label, 0)
        if until is not None and _clock() >= until:
            return deleted


def clear_sessions(until: float | None = None) -> int:
    """Delete expired web sessions (Django's ``clearsessions``, which nothing else runs: every
    login left a row for ever). The database backends in batches of SLUICE_PRUNE_BATCH by
    ``expire_date`` (its index), until ``_clock()`` reaches ``until``, if given; any other
    backend through its own ``clear_expired()`` (files; cookies and the cache expire alone).
    Returns the rows deleted (0 for the other backends)."""
    if not apps.is_installed("django.contrib.sessions"):
        return 0
    store: Any = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store, "get_model_class"):
        store.clear_expired()
        return 0
    model = store.get_model_class()
    deleted = 0
    while True:
        expired = model._default_manager.filter(expire_date__lt=timezone.now())
        keys = list(expired.values_list("pk", flat=True)[: prune_batch()])
        if not keys:
            return deleted
        deleted += expired.filter(pk__in=keys).delete()[0]
        if until is not None and _clock() >= until:
            return deleted


__all__ = ["clear_sessions", "prune", "prune_outbox", "sweep"]
