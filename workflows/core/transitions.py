"""Every state change of a run or a step, once, with a name.

Each transition is a compare-and-swap: a conditional UPDATE on the state it leaves
(``filter(pk=..., status=OLD).update(...)``) that acts only when it touched the row, so two
workers, a sweep and an operator racing for the same row cannot both win. The executor, the
sweep, the services and the apps built on the engine (reviews resolves its gates through
``resolve_wait``) change state only through these functions. The ones whose best form differs
between PostgreSQL and SQLite delegate to the storage contract (``workflows.core.storage``).

Runs:   take · take_many · checkpoint (also ends a run) · end_many · suspend · park · release ·
        mark_runnable · cancel · restart · reclaim_run
Steps:  claim · claim_reserved · claim_reserved_many · claim_inline · queue · defer · complete ·
        finish · retry_due · hand_over · resolve_wait(s) · consume_event · close_group ·
        release_held · ring_again · cancel_steps · supersede · fire_timer · reclaim_step
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import DataError, transaction
from django.db.models import F, QuerySet

from workflows.core.models import (
    ACTIVE_RUN,
    LEASED_RUN,
    Event,
    Run,
    RunStatus,
    Step,
    StepStatus,
)
from workflows.core.storage import Finished, storage

log = logging.getLogger(__name__)

LIVE_STEP = [StepStatus.PENDING, StepStatus.WAITING, StepStatus.RETRYING, StepStatus.RUNNING]

# --- runs ------------------------------------------------------------------------------------


def take(run_id: Any, generation: int, owner: str, now: datetime) -> Run | None:
    """pending | suspended | running with an expired lease → running under ``owner``; a
    compensating run stays compensating (its lease says a worker holds it)."""
    return storage().take_run(run_id, generation, owner, now)


def take_many(items: list[tuple[Any, int]], owner: str, now: datetime) -> list[Run]:
    """``take`` for many (run id, generation) pairs in one statement; the runs taken."""
    return storage().take_runs(items, owner, now)


def checkpoint(
    run_id: Any,
    owner: str,
    generation: int,
    *,
    fields: dict[str, Any],
    cost: Decimal = Decimal(0),
    dirty: list[Step] | None = None,
    inserts: list[Step] | None = None,
) -> bool:
    """Write a run's journal rows fenced on its lease; with terminal ``fields`` it ends it."""
    return storage().checkpoint(
        run_id=run_id,
        owner=owner,
        generation=generation,
        fields=fields,
        cost=cost,
        dirty=dirty if dirty is not None else [],
        inserts=inserts if inserts is not None else [],
    )


def end_many(owner: str, ends: list[tuple[Any, int, dict[str, Any]]]) -> set[Any]:
    """running (ours: owner, generation) → ended with each run's ``fields``, for many runs in
    one statement on PostgreSQL; the ids of the runs ended (the rest are no longer ours)."""
    return storage().end_runs(owner, ends)


def suspend(run_id: Any, owner: str, generation: int, parked: str = RunStatus.SUSPENDED) -> bool:
    """running → suspended (a compensating run parks as compensating: pass ``parked``),
    unless something made the run runnable meanwhile (then the lease is let go so the caller
    takes it again and replays once more). True when parked."""
    n = Run.objects.filter(
        pk=run_id, lease_owner=owner, generation=generation, wake_requested_at__isnull=True
    ).update(status=parked, lease_owner="", lease_expires_at=None)
    if n == 0:
        Run.objects.filter(pk=run_id, lease_owner=owner, generation=generation).update(
            lease_owner="", lease_expires_at=None
        )
    return n == 1


def park(run_id: Any, owner: str, generation: int) -> bool:
    """running (ours) → suspended, lease let go, unless something made the run runnable
    meanwhile (then nothing changes: ``suspend`` later sees the wake and lets go). For a
    worker that has just written what the run waits for, in that same commit."""
    return bool(
        Run.objects.filter(
            pk=run_id, lease_owner=owner, generation=generation, wake_requested_at__isnull=True
        ).update(status=RunStatus.SUSPENDED, lease_owner="", lease_expires_at=None)
    )


def release(run_id: Any, owner: str, generation: int, now: datetime) -> bool:
    """running or compensating (ours) → lease free and runnable: after an unexpected error
    the sweep rings again."""
    return bool(
        Run.objects.filter(
            pk=run_id, lease_owner=owner, generation=generation, status__in=LEASED_RUN
        ).update(lease_owner="", lease_expires_at=None, wake_requested_at=now)
    )


def mark_runnable(run_id: Any, now: datetime) -> int | None:
    """An active run: mark it runnable. Its generation, for the doorbell, or None."""
    if not Run.objects.filter(pk=run_id, status__in=ACTIVE_RUN).update(wake_requested_at=now):
        return None
    return Run.objects.filter(pk=run_id).values_list("generation", flat=True).first()


def cancel(run: Run, now: datetime, error: dict[str, Any], *, compensate: bool = False) -> bool:
    """active (this generation) → canceled, generation + 1 (fencing out in-flight work), and
    its live steps canceled. With ``compensate`` (the run has completed steps to undo) →
    compensating instead, runnable now, to end canceled once its undos ran."""
    fields: dict[str, Any] = (
        {
            "status": RunStatus.COMPENSATING,
            "after_compensation": RunStatus.CANCELED,
            "wake_requested_at": now,
        }
        if compensate
        else {"status": RunStatus.CANCELED, "finished_at": now, "wake_requested_at": None}
    )
    n = Run.objects.filter(pk=run.pk, generation=run.generation, status__in=ACTIVE_RUN).update(
        generation=F("generation") + 1,
        lease_owner="",
        lease_expires_at=None,
        error=error,
        **fields,
    )
    if n != 1:
        return False
    cancel_steps(run.pk, now)
    return True


def restart(run: Run, now: datetime, **fields: Any) -> bool:
    """Any state (this generation) → pending in generation + 1, runnable now."""
    return bool(
        Run.objects.filter(pk=run.pk, generation=run.generation).update(
            status=RunStatus.PENDING,
            generation=F("generation") + 1,
            output=None,
            error=None,
            finished_at=None,
            lease_owner="",
            lease_expires_at=None,
            wake_requested_at=now,
            after_compensation="",
            **fields,
        )
    )


def reclaim_run(run: Run, now: datetime) -> bool:
    """running or compensating under an expired lease → lease free, runnable."""
    return storage().reclaim_run(run, now)


# --- steps -----------------------------------------------------------------------------------


def claim(step_id: int, owner: str, now: datetime) -> bool:
    """pending → running under ``owner`` (a queued step its worker executes)."""
    return storage().claim(step_id, owner, now)


def claim_reserved(step_id: int, owner: str, now: datetime) -> Step | None:
    """running under the fan-out's reservation → running under ``owner``."""
    return storage().claim_reserved(step_id, owner, now)


def claim_reserved_many(claims: list[tuple[int, str]], now: datetime) -> dict[int, Step]:
    """``claim_reserved`` for a batch: (step id, owner) pairs; the steps taken, by id."""
    return storage().claim_reserved_many(claims, now)


def claim_inline(row: Step, fields: dict[str, Any]) -> bool:
    """A journal row the advancing worker re-executes (retrying, pending) → running."""
    return bool(
        Step.objects.filter(pk=row.pk, status=row.status, attempt=row.attempt).update(**fields)
    )


def queue(row: Step, **fields: Any) -> bool:
    """A step whose pool is full → pending, for whichever worker frees a slot."""
    return bool(
        Step.objects.filter(pk=row.pk, status=row.status).update(
            status=StepStatus.PENDING, **fields
        )
    )


def defer(step_id: int, wake_at: datetime) -> bool:
    """pending: not before ``wake_at`` (its pool's rate window is spent)."""
    return bool(Step.objects.filter(pk=step_id, status=StepStatus.PENDING).update(wake_at=wake_at))


def complete(row: Step, owner: str, fields: dict[str, Any]) -> bool:
    """running (ours, this attempt) → succeeded | retrying | failed."""
    return storage().complete(row, owner, fields)


def finish(
    row: Step,
    owner: str,
    fields: dict[str, Any],
    *,
    cost: Decimal,
    now: datetime,
    ready_by: datetime,
    hand_over: bool,
    take_run: bool,
) -> Finished | None:
    """running (ours, this attempt) → ``fields``, with its group, its run and its pool slot
    (``Storage.finish_step``)."""
    return storage().finish_step(
        row,
        owner,
        fields,
        cost=cost,
        now=now,
        ready_by=ready_by,
        hand_over=hand_over,
        take_run=take_run,
    )


def charge_unrecorded(run_id: Any, cost: Decimal, rows: list[tuple[int, Decimal]]) -> None:
    """What attempts spent whose outcome was refused (the run canceled, restarted or taken
    over while they ran): the outcome is discarded, but the money was spent, so ``cost`` goes
    to the run's total (its budget counts every generation) and each ``(step id, cost)`` row
    is raised to that cost (the step's pages and the ops overview). The run first: the lock
    order of a cancel or a restart. A total past the column's range is logged and dropped."""
    if cost <= 0:
        return
    try:
        with transaction.atomic():
            Run.objects.filter(pk=run_id).update(cost=F("cost") + cost)
            for step_id, total in rows:
                Step.objects.filter(pk=step_id, cost__lt=total).update(cost=total)
    except DataError:
        log.warning("could not add %s to the cost of run %s", cost, run_id, exc_info=True)


def retry_due(step_id: int, ready_at: datetime) -> bool:
    """retrying past its backoff → pending (a queued step; inline ones replay)."""
    return bool(
        Step.objects.filter(pk=step_id, status=StepStatus.RETRYING).update(
            status=StepStatus.PENDING, wake_at=ready_at
        )
    )


def hand_over(pool: str, owner: str, now: datetime, ready_by: datetime) -> Step | None:
    """The oldest pending step of ``pool`` → running under ``owner``, taking over its slot."""
    return storage().hand_over(pool, owner, now, ready_by)


def resolve_wait(step_id: int, fields: dict[str, Any]) -> bool:
    """waiting (live) → succeeded | failed: an event arrived, a gate was decided, a child
    ended. The only way an app resolves a wait."""
    return bool(
        Step.objects.filter(pk=step_id, status=StepStatus.WAITING, superseded=False).update(
            **fields
        )
    )


def resolve_waits(
    step_ids: list[int], fields: dict[str, Any], now: datetime
) -> list[tuple[int, Any, int | None]]:
    """``resolve_wait`` for many steps, and their active runs marked runnable:
    (step id, run id, generation or None when the run is not active) per step resolved."""
    return storage().resolve_waits(step_ids, fields, now)


def consume_event(event_id: int, row: Step) -> bool:
    """An unconsumed event → consumed by the waiting step ``row``."""
    return bool(Event.objects.filter(pk=event_id, consumed_by__isnull=True).update(consumed_by=row))


def close_group(group_id: int, failed: bool, now: datetime) -> bool:
    """A fan-out group whose last branch ended: waiting → succeeded | failed."""
    return bool(
        Step.objects.filter(pk=group_id, status=StepStatus.WAITING).update(
            status=StepStatus.FAILED if failed else StepStatus.SUCCEEDED, finished_at=now
        )
    )


def release_held(step_id: int, ready_at: datetime) -> bool:
    """A branch held back by the run's parallelism cap → dispatchable."""
    return bool(Step.objects.filter(pk=step_id, held=True).update(held=False, wake_at=ready_at))


def ring_again(row: Step, ready_at: datetime) -> bool:
    """A pending step whose doorbell went unanswered: push its deadline (the sweep rings)."""
    return bool(
        Step.objects.filter(pk=row.pk, status=StepStatus.PENDING, wake_at=row.wake_at).update(
            wake_at=ready_at
        )
    )


def cancel_steps(run_id: Any, now: datetime) -> int:
    """Every live step of a run → canceled."""
    return Step.objects.filter(run_id=run_id, superseded=False, status__in=LIVE_STEP).update(
        status=StepStatus.CANCELED, finished_at=now, lease_owner="", lease_expires_at=None
    )


def supersede(stale: QuerySet[Step]) -> int:
    """Journal rows a restart replaces: kept as history (superseded), their events freed."""
    Event.objects.filter(consumed_by__in=stale).update(consumed_by=None)
    return stale.update(superseded=True, lease_owner="", lease_expires_at=None)


def fire_timer(row: Step, now: datetime) -> bool:
    """waiting past its deadline → succeeded (a sleep ends; other waits take their default)."""
    return storage().fire_timer(row, now)


def reclaim_step(row: Step, fields: dict[str, Any]) -> bool:
    """running under a dead worker's lease → pending again, or failed."""
    return storage().reclaim_step(row, fields)


def leave_group(row: Step, failed: bool = False) -> tuple[int, int, bool] | None:
    """A branch ended: its group's ``remaining - 1`` (marked if it ``failed``); (group id,
    remaining, holds back). The row lock this takes serializes the branches, so exactly one
    sees zero."""
    return storage().decrement_group(row, failed)
