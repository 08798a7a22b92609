"""The storage contract: the engine's compare-and-swap writes, one interface, two backends.

As DBOS has one system-database interface with a PostgreSQL and a SQLite implementation, the
engine talks to its tables through ``Storage`` for the writes that decide who owns what:

===============  ===========================================================================
take_run(s)      pending/suspended/expired run → running under this worker's lease (a
                 compensating run keeps its status)
checkpoint       previous results + next step "running, attempt n" + lease, fenced on the run
end_runs         a burst of runs ending with no journal row to write, each fenced on itself
resolve_waits    waiting steps → resolved (gates expired together), their runs made runnable
claim            a queued step (pending, or a slot reserved at fan-out) → running
complete         running → succeeded | retrying | failed, fenced on owner and attempt
finish_step      complete, and all that follows in the same commit: the group counted down
                 (the last branch closes it and takes the run's lease, or wakes the run), a
                 held branch let go, the pool slot handed over to the oldest waiting step
hand_over        a finishing worker's pool slot passes to the oldest waiting step
fire_timer       a waiting step whose deadline passed → succeeded (its default, timed out)
reclaim_step/run a dead worker's lease → requeued (the attempt counted) or failed
prune            a batch of runs finished before the retention cutoff → deleted, with every
                 row their foreign keys cascade to (set-based, never loaded into Python)
===============  ===========================================================================

``SQLiteStorage`` is the portable one, written with the ORM: every write is one conditional
UPDATE (``filter(pk=..., status=OLD).update(...)``), acting only when it touched a row;
SQLite serializes writers, and the transactions around the reads keep them consistent.
``PostgresStorage`` does the same transitions in fewer round trips: UPDATE … RETURNING,
data-modifying CTEs for the inline checkpoint and for finishing a queued step (one statement,
one commit each), SKIP LOCKED for the hand-over, unnest() for wide fan-outs and for bursts of
ends. Where the portable statement is already a single conditional UPDATE (complete,
fire_timer, reclaim) PostgreSQL inherits it unchanged: there is nothing to gain, and one
definition cannot drift.
``tests/workflows/test_storage_contract.py`` runs one suite against whichever backend the test
database is (both run in ``make test``).

The named transitions that callers use are in ``workflows.core.transitions``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import CASCADE, NOT_PROVIDED, SET_NULL, Exists, F, OuterRef, Q, signals
from django.db.models.deletion import SKIP_COLLECTION, get_candidate_relations_to_delete
from django.db.models.signals import post_save, pre_save
from psycopg import ClientCursor
from psycopg.types.json import Jsonb

from workflows.core import clock
from workflows.core.leases import lease_until
from workflows.core.models import (
    ACTIVE_RUN,
    LEASED_RUN,
    TERMINAL_RUN,
    Outbox,
    OutboxStatus,
    Run,
    RunStatus,
    Step,
    StepStatus,
)
from workflows.core.pools import RESERVED

# The step columns a checkpoint writes for a row it already holds.
CHECKPOINT_FIELDS = [
    "status",
    "result",
    "error",
    "finished_at",
    "lease_owner",
    "lease_expires_at",
    "usage",
    "cost",
    "wake_at",
    "attempt",
]


# Written on a fan-out group by its first branch that fails: the branch that closes the group
# reads it (under the group's row lock) to close it failed, with no scan of the siblings.
BRANCH_FAILED = {"type": "BranchFailed", "message": "a branch of this fan-out failed"}


# Every column of a journal row but its arguments, which replay never reads.
JOURNAL_COLUMNS = [f.attname for f in Step._meta.concrete_fields if f.attname != "args"]


@dataclass
class Finished:
    """What ``finish_step`` did besides recording the step's outcome."""

    # The oldest waiting step of the pool, now running under the finishing worker (its slot).
    next: Step | None = None
    # The run, its lease taken for the finishing worker: the step was the last thing it
    # waited for and the worker is free to advance it (nothing was handed over).
    run: Run | None = None
    # The run was marked runnable instead (someone holds it, or the worker is not free):
    # ring for it in this generation.
    wake: int | None = None
    # A branch held back by the run's parallelism cap, let go: (id, pool) to dispatch.
    released: tuple[int, str] | None = None


class Storage(ABC):
    """The engine's ownership-deciding writes. Each returns what it took (or False/None when
    the compare-and-swap found the row changed: someone else owns it now)."""

    vendor: str

    # --- runs -----------------------------------------------------------------------------

    @abstractmethod
    def take_run(self, run_id: Any, generation: int, owner: str, now: datetime) -> Run | None:
        """The run lease to ``owner`` if the run is active in ``generation`` and its lease is
        free or expired; the run as updated. A taken run is "running", except a compensating
        one: it stays "compensating" while its undos run (the lease says a worker holds it)."""

    @abstractmethod
    def take_runs(self, items: list[tuple[Any, int]], owner: str, now: datetime) -> list[Run]:
        """``take_run`` for many (run id, generation) pairs; the runs taken."""

    @abstractmethod
    def checkpoint(
        self,
        *,
        run_id: Any,
        owner: str,
        generation: int,
        fields: dict[str, Any],
        cost: Decimal,
        dirty: list[Step],
        inserts: list[Step],
    ) -> bool:
        """If the run is still ours (owner, generation): set ``fields`` on it, add ``cost`` to
        its cost, save the ``dirty`` journal rows and insert ``inserts`` (their pks set), all
        or nothing. False, having written nothing, when it is not ours."""

    @abstractmethod
    def end_runs(self, owner: str, ends: list[tuple[Any, int, dict[str, Any]]]) -> set[Any]:
        """``checkpoint`` with ``fields`` only (no journal row, no cost), for many runs of
        ``owner``: each (run id, generation, fields) whose run is still ours gets its fields.
        Every ``fields`` has the same keys. Returns the ids of the runs written."""

    @abstractmethod
    def reclaim_run(self, run: Run, now: datetime) -> bool:
        """A running (or compensating) run whose lease expired: free the lease and mark it
        runnable."""

    # --- steps ----------------------------------------------------------------------------

    @abstractmethod
    def claim(self, step_id: int, owner: str, now: datetime) -> bool:
        """A pending (not held, not superseded) step → running under ``owner``, attempt + 1."""

    @abstractmethod
    def claim_reserved(self, step_id: int, owner: str, now: datetime) -> Step | None:
        """A branch whose pool slot was reserved at fan-out → ours, attempt + 1; the row."""

    @abstractmethod
    def claim_reserved_many(self, claims: list[tuple[int, str]], now: datetime) -> dict[int, Step]:
        """``claim_reserved`` for each (step id, owner) pair: the steps taken, by id."""

    @abstractmethod
    def complete(self, row: Step, owner: str, fields: dict[str, Any]) -> bool:
        """A running step we hold (owner, attempt, live) → ``fields["status"]``."""

    @abstractmethod
    def finish_step(
        self,
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
        """Record a claimed step's outcome and what follows from it, all or nothing:

        1. running (ours: owner, attempt, live) → ``fields`` (``fields["status"]``); None,
           having written nothing, when the step is no longer ours. ``cost`` is added to the
           step's cost and to the run's.
        2. A terminal branch counts its group down (a failed one marks it ``BRANCH_FAILED``);
           the one that takes it to zero closes it, succeeded or failed. A terminal queued
           step that is not a branch was what its run waited for.
        3. Either way the run may go on: with ``take_run`` and nothing handed over (step 5),
           its lease is taken for ``owner`` if free (``Finished.run``); otherwise the run is
           marked runnable (``Finished.wake``: ring for it).
        4. A terminal branch of a group wider than the run's cap lets the next held branch go
           (``Finished.released``: dispatch it).
        5. With ``hand_over``: the oldest pending step of the pool, due by ``ready_by``, its
           run active, → running under ``owner`` (``Finished.next``).
        """

    @abstractmethod
    def hand_over(self, pool: str, owner: str, now: datetime, ready_by: datetime) -> Step | None:
        """Claim the oldest pending step of ``pool`` (due by ``ready_by``, run active)."""

    @abstractmethod
    def fire_timer(self, row: Step, now: datetime) -> bool:
        """A waiting step past its deadline → succeeded: a sleep ends; any other wait goes on
        with its journaled default, marked timed out."""

    @abstractmethod
    def reclaim_step(self, row: Step, fields: dict[str, Any]) -> bool:
        """A running step whose lease expired → ``fields`` (pending again, or failed), fenced
        on the lease owner and attempt the sweep saw."""

    @abstractmethod
    def insert_run(self, run: Run) -> None:
        """Insert a new run, as ``run.save(force_insert=True)`` would."""

    @abstractmethod
    def journal_rows(self, run_ids: list[Any]) -> list[tuple[Any, ...]]:
        """The live (not superseded) journal rows of these runs in replay order (run,
        position, branch): the values of ``JOURNAL_COLUMNS`` each, as the ORM reads them."""

    @abstractmethod
    def insert_steps(self, rows: list[Step]) -> None:
        """Insert journal rows (a fan-out's branches) and set their primary keys."""

    @abstractmethod
    def decrement_group(self, row: Step, failed: bool = False) -> tuple[int, int, bool] | None:
        """``remaining - 1`` on the branch's group (marked ``BRANCH_FAILED`` if ``failed``):
        (group id, remaining, holds back)."""

    @abstractmethod
    def resolve_waits(
        self, step_ids: list[int], fields: dict[str, Any], now: datetime
    ) -> list[tuple[int, Any, int | None]]:
        """Waiting (live) steps → ``fields``, and their active runs marked runnable at
        ``now``: (step id, run id, the run's generation, or None when the run is not active)
        for each step this call resolved."""

    # --- retention ------------------------------------------------------------------------

    @abstractmethod
    def prune(
        self,
        cutoff: datetime,
        limit: int,
        before_delete: Callable[[list[Any]], object] | None = None,
    ) -> int:
        """Delete about ``limit`` runs that finished (terminal) before ``cutoff``, oldest first,
        with every row their foreign keys reach (CASCADE deletes, SET_NULL clears), in one
        transaction; the number of runs deleted (0: none left). A child run goes only in the
        batch of its parent (whole families: one larger than ``limit`` is a batch of its own).
        ``before_delete(run_ids)`` is called first in that transaction, so whatever it raises
        rolls the batch back."""


class SQLiteStorage(Storage):
    """The portable implementation (the ORM); what the embedded default runs."""

    vendor = "sqlite"

    def take_run(self, run_id: Any, generation: int, owner: str, now: datetime) -> Run | None:
        rows = self.take_runs([(run_id, generation)], owner, now)
        return rows[0] if rows else None

    def take_runs(self, items: list[tuple[Any, int]], owner: str, now: datetime) -> list[Run]:
        """One statement for all, UPDATE … RETURNING (SQLite has it since 3.35): the rows
        taken come back from the write itself."""
        if not items:
            return []
        pk_field = Run._meta.pk
        assert pk_field is not None
        pairs = ", ".join(["(%s, %s)"] * len(items))
        active = ", ".join(["%s"] * len(ACTIVE_RUN))
        params: list[Any] = [
            RunStatus.COMPENSATING,
            RunStatus.RUNNING,
            owner,
            lease_until(now),
            now,
        ]
        for run_id, generation in items:
            params += [pk_field.get_db_prep_value(run_id, connection), generation]
        params += [*ACTIVE_RUN, now]
        sql = (
            f"UPDATE {Run._meta.db_table} "
            "SET status = CASE WHEN status = %s THEN status ELSE %s END, lease_owner = %s, "
            "lease_expires_at = %s, wake_requested_at = NULL, "
            "started_at = COALESCE(started_at, %s) "
            f"WHERE (id, generation) IN ({pairs}) AND status IN ({active}) "
            "AND (lease_owner = '' OR lease_expires_at < %s) RETURNING *"
        )
        return list(Run.objects.raw(sql, params))

    def checkpoint(
        self,
        *,
        run_id: Any,
        owner: str,
        generation: int,
        fields: dict[str, Any],
        cost: Decimal,
        dirty: list[Step],
        inserts: list[Step],
    ) -> bool:
        values = dict(fields)
        if cost:
            values["cost"] = F("cost") + cost
        with transaction.atomic(savepoint=False):
            # The run row first: it fences (a cancel or restart bumped the generation) and it
            # locks the run for the rest of the transaction.
            mine = Run.objects.filter(pk=run_id, lease_owner=owner, generation=generation)
            n = mine.update(**values) if values else mine.count()
            if n != 1:
                return False
            for row in dirty:
                row.save(update_fields=CHECKPOINT_FIELDS)
            if inserts:
                Step.objects.bulk_create(inserts)
        return True

    def end_runs(self, owner: str, ends: list[tuple[Any, int, dict[str, Any]]]) -> set[Any]:
        return {
            run_id
            for run_id, generation, fields in ends
            if Run.objects.filter(pk=run_id, lease_owner=owner, generation=generation).update(
                **fields
            )
        }

    def reclaim_run(self, run: Run, now: datetime) -> bool:
        return bool(
            Run.objects.filter(
                pk=run.pk,
                status__in=LEASED_RUN,
                lease_owner=run.lease_owner,
                lease_expires_at__lt=now,
            ).update(lease_owner="", lease_expires_at=None, wake_requested_at=now)
        )

    def claim(self, step_id: int, owner: str, now: datetime) -> bool:
        return bool(
            Step.objects.filter(
                pk=step_id, status=StepStatus.PENDING, held=False, superseded=False
            ).update(
                status=StepStatus.RUNNING,
                attempt=F("attempt") + 1,
                lease_owner=owner,
                lease_expires_at=lease_until(now),
                started_at=now,
                finished_at=None,  # the previous attempt's end, until this one ends
                wake_at=None,
            )
        )

    def claim_reserved(self, step_id: int, owner: str, now: datetime) -> Step | None:
        with transaction.atomic(savepoint=False):
            n = Step.objects.filter(
                pk=step_id,
                status=StepStatus.RUNNING,
                lease_owner=RESERVED,
                lease_expires_at__gt=now,
                superseded=False,
                run__status__in=ACTIVE_RUN,
            ).update(
                attempt=F("attempt") + 1,
                lease_owner=owner,
                lease_expires_at=lease_until(now),
                started_at=now,
                finished_at=None,
            )
            return Step.objects.get(pk=step_id) if n == 1 else None

    def claim_reserved_many(self, claims: list[tuple[int, str]], now: datetime) -> dict[int, Step]:
        taken = {}
        for step_id, owner in claims:
            row = self.claim_reserved(step_id, owner, now)
            if row is not None:
                taken[step_id] = row
        return taken

    def complete(self, row: Step, owner: str, fields: dict[str, Any]) -> bool:
        return bool(
            Step.objects.filter(
                pk=row.pk,
                status=StepStatus.RUNNING,
                lease_owner=owner,
                attempt=row.attempt,
                superseded=False,
            ).update(**fields)
        )

    def finish_step(
        self,
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
        """The ORM's statements in one transaction; SQLite's write lock, taken by the first
        UPDATE, serializes finishing branches, so exactly one sees its group reach zero."""
        status = fields["status"]
        terminal = status in (StepStatus.SUCCEEDED, StepStatus.FAILED)
        values = dict(fields)
        if cost:
            values["cost"] = F("cost") + cost
        out = Finished()
        with transaction.atomic(savepoint=False):
            if not self.complete(row, owner, values):
                return None
            if cost:
                Run.objects.filter(pk=row.run_id).update(cost=F("cost") + cost)
            closes = terminal and row.branch < 0
            if terminal and row.branch >= 0:
                group = self.decrement_group(row, failed=status == StepStatus.FAILED)
                if group is not None:
                    group_id, remaining, holds_back = group
                    if remaining == 0:
                        flagged = Step.objects.filter(pk=group_id, error__isnull=False).exists()
                        closes = bool(
                            Step.objects.filter(pk=group_id, status=StepStatus.WAITING).update(
                                status=StepStatus.FAILED if flagged else StepStatus.SUCCEEDED,
                                finished_at=now,
                            )
                        )
                    if holds_back:
                        out.released = self._release_held(row.run_id, ready_by)
            if hand_over:
                out.next = self.hand_over(row.pool, owner, now, ready_by)
            if closes:
                if take_run and out.next is None:
                    out.run = self.take_run(row.run_id, row.generation, owner, now)
                if out.run is None and Run.objects.filter(
                    pk=row.run_id, status__in=ACTIVE_RUN
                ).update(wake_requested_at=now):
                    out.wake = (
                        Run.objects.filter(pk=row.run_id)
                        .values_list("generation", flat=True)
                        .first()
                    )
        return out

    @staticmethod
    def _release_held(run_id: Any, ready_by: datetime) -> tuple[int, str] | None:
        held = (
            Step.objects.filter(
                run_id=run_id, held=True, superseded=False, status=StepStatus.PENDING
            )
            .order_by("position", "branch")
            .values_list("pk", "pool")
            .first()
        )
        if held is not None and Step.objects.filter(pk=held[0], held=True).update(
            held=False, wake_at=ready_by
        ):
            return held
        return None

    def hand_over(self, pool: str, owner: str, now: datetime, ready_by: datetime) -> Step | None:
        candidates = (
            Step.objects.filter(pool=pool, status=StepStatus.PENDING, held=False, superseded=False)
            .filter(Q(wake_at__isnull=True) | Q(wake_at__lte=ready_by))
            .select_related("run")
            .order_by("id")
        )
        for cand in candidates[:3]:
            if cand.run.status not in ACTIVE_RUN:
                continue
            if self.claim(cand.pk, owner, now):
                cand.status = StepStatus.RUNNING
                cand.attempt += 1
                cand.lease_owner = owner
                cand.finished_at = None
                return cand
        return None

    def fire_timer(self, row: Step, now: datetime) -> bool:
        fields: dict[str, Any] = {"status": StepStatus.SUCCEEDED, "finished_at": now}
        if row.kind != "sleep":
            fields["result"] = (row.args or {}).get("default")
            fields["usage"] = {"timed_out": True}
        return bool(
            Step.objects.filter(pk=row.pk, status=StepStatus.WAITING, superseded=False).update(
                **fields
            )
        )

    def reclaim_step(self, row: Step, fields: dict[str, Any]) -> bool:
        return bool(
            Step.objects.filter(
                pk=row.pk,
                status=StepStatus.RUNNING,
                lease_owner=row.lease_owner,
                attempt=row.attempt,
            ).update(**fields)
        )

    def insert_run(self, run: Run) -> None:
        run.save(force_insert=True)

    def journal_rows(self, run_ids: list[Any]) -> list[tuple[Any, ...]]:
        rows = Step.objects.filter(run_id__in=run_ids, superseded=False).order_by(
            "run_id", "position", "branch"
        )
        return list(rows.values_list(*JOURNAL_COLUMNS))

    def insert_steps(self, rows: list[Step]) -> None:
        Step.objects.bulk_create(rows)

    def decrement_group(self, row: Step, failed: bool = False) -> tuple[int, int, bool] | None:
        group = Step.objects.filter(
            run_id=row.run_id, position=row.position, branch=-1, superseded=False
        )
        with transaction.atomic(savepoint=False):
            if not group.update(remaining=F("remaining") - 1):
                return None
            if failed:
                group.filter(error__isnull=True).update(error=BRANCH_FAILED)
            found = group.values_list("id", "remaining", "args").first()
        if found is None:
            return None
        return found[0], found[1], bool((found[2] or {}).get("held", True))

    def resolve_waits(
        self, step_ids: list[int], fields: dict[str, Any], now: datetime
    ) -> list[tuple[int, Any, int | None]]:
        if not step_ids:
            return []
        q = connection.ops.quote_name
        step_fields: list[Any] = [Step._meta.get_field(name) for name in fields]
        sets = ", ".join(f"{q(f.column)} = %s" for f in step_fields)
        params = [
            f.get_db_prep_save(value, connection)
            for f, value in zip(step_fields, fields.values(), strict=True)
        ]
        marks = ", ".join(["%s"] * len(step_ids))
        with connection.cursor() as cur:
            # The compare-and-swap returns the rows it changed (UPDATE … RETURNING).
            cur.execute(
                f"UPDATE {Step._meta.db_table} SET {sets} WHERE id IN ({marks}) AND status = %s "
                "AND superseded = %s RETURNING id, run_id",
                [*params, *step_ids, StepStatus.WAITING, False],
            )
            done = cur.fetchall()
        if not done:
            return []
        run_pk: Any = Run._meta.pk
        done = [(pk, run_pk.to_python(run_id)) for pk, run_id in done]
        woken = Run.objects.filter(pk__in={run_id for _, run_id in done}, status__in=ACTIVE_RUN)
        woken.update(wake_requested_at=now)
        generations = dict(woken.values_list("pk", "generation"))
        return [(pk, run_id, generations.get(run_id)) for pk, run_id in done]

    def prune(
        self,
        cutoff: datetime,
        limit: int,
        before_delete: Callable[[list[Any]], object] | None = None,
    ) -> int:
        """Set-based: one ``DELETE … RETURNING`` per table the runs' foreign keys reach, the
        keys it returns feeding the next table's, instead of ``QuerySet.delete()``, which
        loads every journal row (and its gate) into Python to cascade. Parents go first: the
        foreign keys are deferred to the commit, as Django declares them on both backends.
        Relations only the ORM can follow (delete signals, PROTECT, SET(...), multi-table
        inheritance) send the batch through ``QuerySet.delete()`` instead."""
        with transaction.atomic():
            ids = self._prune_families(cutoff, limit)
            if not ids:
                return 0
            if before_delete is not None:
                before_delete(ids)
            plan = _delete_plan()
            if plan is None:
                Run.objects.filter(pk__in=ids).delete()
            else:
                self._delete_runs(plan, ids)
        return len(ids)

    def _prune_families(self, cutoff: datetime, limit: int) -> list[Any]:
        """The runs of one prune batch, locked: whole families, a top-level run with the
        descendants that go with it, oldest top-level runs first, about ``limit`` runs (at
        least one family).

        A child run only with its parent: the parent's journal refers to the child's output,
        which the child owns (a large one is the child's blob), and a parent kept reads it
        again on replay, restart or fork. So children are never picked on their own, only
        found under a parent picked in this batch (a parent kept for any reason, such as a
        pending outbox row, a live child or a row locked by an operator's restart, keeps its
        children: checking the parent's age and state alone pruned them without it).

        Locked (PostgreSQL; SQLite's IMMEDIATE transaction holds the write lock): a restart
        of one of these runs waits, then finds it gone. No run something still refers to as
        live: a run with a child still going (compensating after its parent failed: pruned,
        the parent's loss set its parent_id to NULL and an operator could restart it on its
        own), or with a side effect still to leave (a webhook retrying for a day, under a
        retention shorter than that, lost its delivery record with the run).

        A descendant that must stay itself (younger than the cutoff, a pending outbox row,
        a child still going) stays alone: it keeps its own journal, and its parent_id is
        cleared with the parent. One whose row another transaction holds (an operator
        restarting it) keeps its whole family for a later batch."""
        live_child = Run.objects.filter(parent=OuterRef("pk"), status__in=ACTIVE_RUN)
        pending = Outbox.objects.filter(run=OuterRef("pk"), status=OutboxStatus.PENDING)
        prunable = (
            Run.objects.filter(status__in=TERMINAL_RUN, finished_at__lt=cutoff)
            .exclude(Exists(live_child))
            .exclude(Exists(pending))
        )
        # The top-level runs: one scan of run_finished, oldest first, each probed for a live
        # child (the parent_id index) and a pending outbox row (the outbox's run index).
        roots = list(
            prunable.filter(parent__isnull=True)
            .order_by("finished_at")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)[:limit]
        )
        if not roots:
            return []
        # Their descendants, level by level through the parent_id index, unlocked for now:
        # family[run] is its top-level run, members[root] the family in order.
        family: dict[Any, Any] = {pk: pk for pk in roots}
        members: dict[Any, list[Any]] = {pk: [pk] for pk in roots}
        level = roots
        while level:
            found: list[Any] = []
            for chunk in (level[i : i + 500] for i in range(0, len(level), 500)):
                found += (
                    prunable.filter(parent_id__in=chunk).order_by().values_list("pk", "parent_id")
                )
            level = []
            for pk, parent_id in found:
                if pk in family:  # a cycle (never made by the engine): not followed
                    continue
                family[pk] = family[parent_id]
                members[family[pk]].append(pk)
                level.append(pk)
        # About ``limit`` runs: whole families, oldest first (a run with many children may
        # make a batch of one family larger than the limit).
        chosen: list[Any] = []
        for root in roots:
            if chosen and len(chosen) + len(members[root]) > limit:
                del members[root]
                continue
            chosen += members[root]
        descendants = [pk for pk in chosen if family[pk] != pk]
        if descendants:
            # Locked in their turn, still prunable under the lock; a descendant held by
            # another transaction (or no longer prunable) keeps its whole family.
            locked: set[Any] = set()
            for chunk in (descendants[i : i + 500] for i in range(0, len(descendants), 500)):
                locked.update(
                    prunable.filter(pk__in=chunk)
                    .order_by()
                    .select_for_update(skip_locked=True, of=("self",))
                    .values_list("pk", flat=True)
                )
            kept = {family[pk] for pk in descendants if pk not in locked}
            if kept:
                chosen = [pk for pk in chosen if family[pk] not in kept]
        return chosen

    def _delete_runs(self, plan: _Plan, ids: list[Any]) -> None:
        pk: Any = Run._meta.pk
        self._delete_rows(plan, Run, pk, [pk.get_db_prep_value(i, connection) for i in ids])

    def _delete_rows(self, plan: _Plan, model: Any, field: Any, keys: list[Any]) -> None:
        """Delete ``model``'s rows whose ``field`` is in ``keys``, then follow the foreign keys
        that point at them with the keys the delete returned."""
        refs = plan[model]
        targets = sorted({ref.target for ref in refs})
        table = connection.ops.quote_name(model._meta.db_table)
        returning = ", ".join(connection.ops.quote_name(c) for c in targets)
        found: dict[str, list[Any]] = {c: [] for c in targets}
        for where, params in self._in(field, keys):
            sql = f"DELETE FROM {table} WHERE {where}"
            with connection.cursor() as cur:
                if not targets:
                    cur.execute(sql, params)
                    continue
                cur.execute(f"{sql} RETURNING {returning}", params)
                for row in cur.fetchall():
                    for column, value in zip(targets, row, strict=True):
                        if value is not None:
                            found[column].append(value)
        for ref in refs:
            if not found[ref.target]:
                continue
            if ref.cascade:
                self._delete_rows(plan, ref.model, ref.field, found[ref.target])
            else:
                child = connection.ops.quote_name(ref.model._meta.db_table)
                column = connection.ops.quote_name(ref.field.column)
                for where, params in self._in(ref.field, found[ref.target]):
                    with connection.cursor() as cur:
                        cur.execute(f"UPDATE {child} SET {column} = NULL WHERE {where}", params)

    def _in(self, field: Any, keys: list[Any]) -> list[tuple[str, list[Any]]]:
        """``field``'s column among ``keys``: (condition, parameters) pieces, a few hundred
        keys each (SQLite's parameter limit)."""
        column = connection.ops.quote_name(field.column)
        return [
            (f"{column} IN ({', '.join(['%s'] * len(chunk))})", chunk)
            for chunk in (keys[i : i + 500] for i in range(0, len(keys), 500))
        ]


class PostgresStorage(SQLiteStorage):
    """The same transitions in fewer round trips (see the module docstring). Inherits
    ``take_run`` (through its own ``take_runs``), ``claim``, ``complete``, ``fire_timer``,
    ``reclaim_step`` and ``reclaim_run``: one conditional UPDATE each on both backends. The
    statements every step runs go through ``_fetchone``/``_fetchall`` (a psycopg cursor kept
    per connection, rows built positionally)."""

    vendor = "postgresql"

    def checkpoint(
        self,
        *,
        run_id: Any,
        owner: str,
        generation: int,
        fields: dict[str, Any],
        cost: Decimal,
        dirty: list[Step],
        inserts: list[Step],
    ) -> bool:
        """One statement of data-modifying CTEs, run in autocommit, which PostgreSQL applies
        atomically: through the ORM the same is three statements plus BEGIN/COMMIT. The step
        writes are conditioned on the run CAS (``EXISTS (SELECT 1 FROM r)``), so a run that is
        no longer ours changes nothing. More than one new row: the portable path."""
        if len(inserts) > 1:
            return super().checkpoint(
                run_id=run_id,
                owner=owner,
                generation=generation,
                fields=fields,
                cost=cost,
                dirty=dirty,
                inserts=inserts,
            )
        run_cols = tuple(fields)
        params: list[Any] = [_run_value(name, fields[name]) for name in run_cols]
        if cost:
            params.append(cost)
        params += [run_id, owner, generation]
        updates: list[int] = []
        for row in dirty:
            shape, values = _row_params(row, _update_specs())
            updates.append(shape)
            params += values
            params.append(row.pk)
        insert = -1
        if inserts:
            insert, values = _row_params(inserts[0], _insert_specs())
            params += values
        sql = _checkpoint_sql(run_cols, bool(cost), tuple(updates), insert)
        ok, new_id = _fetchone(sql, params)
        if ok and inserts:
            inserts[0].pk = new_id
            inserts[0]._state.adding = False
        return bool(ok)

    def take_runs(self, items: list[tuple[Any, int]], owner: str, now: datetime) -> list[Run]:
        """The portable statement, with the rows built straight from the cursor (a RawQuerySet
        resolves its columns, converters and init order anew for each query, as much Python as
        the statement itself for the one run a doorbell takes).

        One run (a doorbell's): the primary key and generation as plain parameters, so the
        statement's generic plan, which PostgreSQL settles on after five executions on a
        connection, is the primary key's index at any size of the table. Several (a batch
        doorbell, the sweep): the pairs as two arrays, planned for each call with its values
        (``prepare=False``; see ``_fetchall``): a generic plan for ``IN (SELECT …
        unnest(…))`` is chosen from the statistics of the moment it is made, and one made
        while the table was small is a sequential scan of every run, kept until the table's
        statistics change (W1 measured it at 0.33 ms a take at 600 runs)."""
        if not items:
            return []
        pk_field: Any = Run._meta.pk
        head = [RunStatus.COMPENSATING, RunStatus.RUNNING, owner, lease_until(now), now]
        tail = [list(ACTIVE_RUN), now]
        if len(items) == 1:
            ((run_id, generation),) = items
            keys = [pk_field.get_db_prep_value(run_id, connection), generation]
            rows = _fetchall(_take_runs_sql(False), [*head, *keys, *tail])
        else:
            keys = [
                [pk_field.get_db_prep_value(run_id, connection) for run_id, _ in items],
                [generation for _, generation in items],
            ]
            rows = _fetchall(_take_runs_sql(True), [*head, *keys, *tail], prepare=False)
        return [_model_from(Run, row) for row in rows]

    def end_runs(self, owner: str, ends: list[tuple[Any, int, dict[str, Any]]]) -> set[Any]:
        """One ``UPDATE … FROM unnest(arrays)`` for the whole burst, fenced per run on
        (id, generation, owner): a column an array, as in ``insert_steps``. Through
        ``checkpoint`` the same is a statement per run."""
        if not ends:
            return set()
        names = list(ends[0][2])
        fields: list[Any] = [Run._meta.get_field(name) for name in names]
        pk_field: Any = Run._meta.pk
        gen_field: Any = Run._meta.get_field("generation")
        q = connection.ops.quote_name
        cols = ", ".join(["id", "generation", *(q(f.column) for f in fields)])
        arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in [pk_field, gen_field, *fields])
        sets = ", ".join(f"{q(f.column)} = v.{q(f.column)}" for f in fields)
        params: list[Any] = [
            [pk_field.get_db_prep_value(run_id, connection) for run_id, _, _ in ends],
            [generation for _, generation, _ in ends],
            *(
                [_prep(f, values[name], raw=True) for _, _, values in ends]
                for f, name in zip(fields, names, strict=True)
            ),
            owner,
        ]
        rows = _fetchall(
            f"UPDATE {Run._meta.db_table} AS r SET {sets} FROM unnest({arrays}) AS v({cols}) "
            "WHERE r.id = v.id AND r.generation = v.generation AND r.lease_owner = %s "
            "RETURNING r.id",
            params,
            prepare=False,  # arrays: planned with their values (see ``take_runs``)
        )
        return {pk_field.to_python(row[0]) for row in rows}

    def claim_reserved(self, step_id: int, owner: str, now: datetime) -> Step | None:
        table = Step._meta.db_table
        active = ", ".join(["%s"] * len(ACTIVE_RUN))
        rows = list(
            Step.objects.raw(
                f"UPDATE {table} SET attempt = attempt + 1, lease_owner = %s, "
                "lease_expires_at = %s, started_at = %s, finished_at = NULL "
                "WHERE id = %s AND status = %s "
                "AND lease_owner = %s AND lease_expires_at > %s AND superseded = %s "
                f"AND run_id IN (SELECT id FROM {Run._meta.db_table} "
                f"WHERE status IN ({active})) RETURNING *",
                [
                    owner,
                    lease_until(now),
                    now,
                    step_id,
                    StepStatus.RUNNING,
                    RESERVED,
                    now,
                    False,
                    *ACTIVE_RUN,
                ],
            )
        )
        return rows[0] if rows else None

    def finish_step(
        self,
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
        """One statement of data-modifying CTEs in autocommit, where the ORM takes a
        transaction of up to seven: the step (``s``), its group (``g``), a held branch
        (``h``), the hand-over (``n``) and the run (``r``), each conditioned on the step's
        compare-and-swap. The group's row lock is held for this one statement only, so
        branches finishing together queue on it for microseconds, not for a transaction's
        round trips. The group's failure is a mark on its row, not a scan of the siblings:
        a sibling that committed after this statement's snapshot is invisible to a scan,
        while the row lock re-reads the group's own row.

        The statement is built once per shape (``_finish_sql``) and runs on a generic plan
        (``_fetchone(generic=True)``): see ``_on_hot_cursor``."""
        status = fields["status"]
        terminal = status in (StepStatus.SUCCEEDED, StepStatus.FAILED)
        branch = terminal and row.branch >= 0
        p: dict[str, Any] = {
            "id": row.pk,
            "owner": owner,
            "attempt": row.attempt,
            "run": Run._meta.pk.get_db_prep_value(row.run_id, connection),  # type: ignore[union-attr]
        }
        for name, value in fields.items():
            p[f"f_{name}"] = _prep(Step._meta.get_field(name), value, raw=True)
        if cost:
            p["cost"] = cost
        if branch:
            p.update(position=row.position, failed=status == StepStatus.FAILED, now=now)
            p["mark"] = Jsonb(BRANCH_FAILED)
            p["ready_by"] = ready_by
        if hand_over:
            p.update(pool=row.pool, now=now, until=lease_until(now), ready_by=ready_by)
        closes = branch or (terminal and row.branch < 0)
        if closes or cost:
            p.update(generation=row.generation, take=take_run, now=now, until=lease_until(now))
        sql = _finish_sql(tuple(fields), bool(cost), terminal, row.branch >= 0, hand_over)
        found = _fetchone(sql, p, generic=True)
        if not found[0]:
            return None
        # The columns: 5 scalars, the handed-over step's row, the run's row (NULLs if none).
        split = 5 + len(Step._meta.concrete_fields)
        out = Finished()
        if found[1] is not None:
            out.released = (found[1], found[2])
        if found[3] or found[4]:
            run = _model_from(Run, found[split:])
            if found[3]:
                out.run = run
            else:
                out.wake = run.generation
        if found[5] is not None:
            out.next = _model_from(Step, found[5:split])
        return out

    def claim_reserved_many(self, claims: list[tuple[int, str]], now: datetime) -> dict[int, Step]:
        """One ``UPDATE … FROM unnest()`` for the batch, each row to its own owner, on the
        per-connection cursor (its rows built as ``take_runs`` builds them)."""
        if not claims:
            return {}
        table = Step._meta.db_table
        rows = _fetchall(
            f"UPDATE {table} s SET attempt = s.attempt + 1, lease_owner = c.owner, "
            "lease_expires_at = %s, started_at = %s, finished_at = NULL "
            "FROM unnest(%s::bigint[], %s::varchar[]) AS c(id, owner) "
            "WHERE s.id = c.id AND s.status = %s AND s.lease_owner = %s "
            "AND s.lease_expires_at > %s AND s.superseded = %s "
            f"AND s.run_id IN (SELECT id FROM {Run._meta.db_table} WHERE status = ANY(%s)) "
            f"RETURNING {_columns_sql(Step, 's')}",
            [
                lease_until(now),
                now,
                [step_id for step_id, _ in claims],
                [owner for _, owner in claims],
                StepStatus.RUNNING,
                RESERVED,
                now,
                False,
                list(ACTIVE_RUN),
            ],
            prepare=False,  # arrays: planned with their values (see ``take_runs``)
        )
        return {step.pk: step for step in (_model_from(Step, row) for row in rows)}

    def hand_over(self, pool: str, owner: str, now: datetime, ready_by: datetime) -> Step | None:
        """One statement: pick the oldest waiting step nobody else is taking (SKIP LOCKED)
        and claim it."""
        table = Step._meta.db_table
        active = ", ".join(["%s"] * len(ACTIVE_RUN))
        rows = list(
            Step.objects.raw(
                f"UPDATE {table} SET status = %s, attempt = attempt + 1, lease_owner = %s, "
                "lease_expires_at = %s, started_at = %s, finished_at = NULL, wake_at = NULL "
                "WHERE id = ("
                f"SELECT s.id FROM {table} s JOIN {Run._meta.db_table} r ON r.id = s.run_id "
                "WHERE s.pool = %s AND s.status = %s AND s.held = %s AND s.superseded = %s "
                f"AND (s.wake_at IS NULL OR s.wake_at <= %s) AND r.status IN ({active}) "
                "ORDER BY s.id LIMIT 1 FOR UPDATE OF s SKIP LOCKED) RETURNING *",
                [
                    StepStatus.RUNNING,
                    owner,
                    lease_until(now),
                    now,
                    pool,
                    StepStatus.PENDING,
                    False,
                    False,
                    ready_by,
                    *ACTIVE_RUN,
                ],
            )
        )
        return rows[0] if rows else None

    def journal_rows(self, run_ids: list[Any]) -> list[tuple[Any, ...]]:
        """On the per-connection cursor, the JSON columns converted as the ORM does: the ORM
        compiled the query and converted every row again for each replay (a wide fan-out's
        final replay: 1.6 of the 5.7 ms from its last branch's end to the run's). One run's
        journal (a replay's) by its run id, prepared: its generic plan reads the live rows
        through ``step_unique_live_position`` on a new table and on a history alike. Several
        (a burst of resumes): an array of ids, planned with its values (as ``take_runs``)."""
        if not run_ids:
            return []
        pk_field: Any = Run._meta.pk
        keys = [pk_field.get_db_prep_value(run_id, connection) for run_id in run_ids]
        if len(keys) == 1:
            rows = _fetchall(_journal_sql(False), keys)
        else:
            rows = _fetchall(_journal_sql(True), [keys], prepare=False)
        convert = _journal_converters()
        return [tuple(_converted(row, convert)) for row in rows]

    def insert_run(self, run: Run) -> None:
        """The statement built once per process, each value prepared by its field as save()
        prepares it: the ORM compiles the same INSERT of every column anew for each run, which was
        ~0.2 ms of the ~2.5 ms of CPU an API start costs (W7). save() would also send
        pre_save/post_save: with a receiver for runs (there is none today) it is used instead."""
        if pre_save.has_listeners(Run) or post_save.has_listeners(Run):
            super().insert_run(run)
            return
        sql, fields = _insert_run_sql()
        params = [f.get_db_prep_save(f.pre_save(run, True), connection) for f in fields]
        with connection.cursor() as cur:
            cur.execute(sql, params)
        run._state.adding = False
        run._state.db = connection.alias

    def insert_steps(self, rows: list[Step]) -> None:
        """``INSERT … SELECT FROM unnest(arrays)``: a column an array instead of a parameter
        per value, measured about 3x faster than ``bulk_create`` for 100 branches (binary
        arrays halved what was left of the client's side). A column that holds the same
        value in every row (most of a fan-out's: its run, position, pool, target, deadline…)
        is one parameter instead of an array: psycopg dumps each element of an array in
        Python, and a 100-branch fan-out's 27 arrays were a third of its CPU."""
        if len(rows) < 8:
            Step.objects.bulk_create(rows)
            return
        fields = _insert_fields()
        # The fan-out's group row goes in as a row of parameters of its own: beside it, every
        # column its branches share would otherwise differ in one row.
        groups = [row for row in rows if row.branch < 0]
        lead = groups[0] if len(groups) == 1 else None
        rest = [row for row in rows if row is not lead]
        params: list[Any] = [_prep(f, lead) for f in fields] if lead is not None else []
        scalars: list[Any] = []
        arrays: list[Any] = []
        shape = []
        for f in fields:
            values = [getattr(row, f.attname) for row in rest]
            same = _shared(f, values)
            if same:
                scalars.append(_prep(f, rest[0]))
            else:
                arrays.append([_prep(f, row) for row in rest])
            shape.append(same)
        with connection.cursor() as cur:
            cur.execute(
                _insert_steps_sql(tuple(shape), lead is not None), [*params, *scalars, *arrays]
            )
            ids = dict((branch, pk) for pk, branch in cur.fetchall())
        for row in rows:
            row.pk = ids[row.branch]
            row._state.adding = False

    def decrement_group(self, row: Step, failed: bool = False) -> tuple[int, int, bool] | None:
        run_pk = Run._meta.pk.get_db_prep_value(row.run_id, connection)  # type: ignore[union-attr]
        params: list[Any] = [failed, Jsonb(BRANCH_FAILED), run_pk, row.position, False]
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE {Step._meta.db_table} SET remaining = remaining - 1, "
                "error = CASE WHEN %s AND error IS NULL THEN %s ELSE error END "
                "WHERE run_id = %s AND position = %s AND branch = -1 AND superseded = %s "
                "RETURNING id, remaining, args",
                params,
            )
            found = cur.fetchone()
        if not found:
            return None
        args = found[2]
        if isinstance(args, str):
            args = json.loads(args)
        return found[0], found[1], bool((args or {}).get("held", True))

    def resolve_waits(
        self, step_ids: list[int], fields: dict[str, Any], now: datetime
    ) -> list[tuple[int, Any, int | None]]:
        """One statement of two data-modifying CTEs (the steps, then their runs), the ids as
        arrays: a burst of gates that expired together costs one round trip, not three."""
        if not step_ids:
            return []
        q = connection.ops.quote_name
        step_fields: list[Any] = [Step._meta.get_field(name) for name in fields]
        sets = ", ".join(f"{q(f.column)} = %s::{f.db_type(connection)}" for f in step_fields)
        params: list[Any] = [
            _prep(f, value, raw=True) for f, value in zip(step_fields, fields.values(), strict=True)
        ]
        params += [list(step_ids), StepStatus.WAITING, False, now, list(ACTIVE_RUN)]
        with connection.cursor() as cur:
            cur.execute(
                f"WITH s AS (UPDATE {Step._meta.db_table} SET {sets} WHERE id = ANY(%s::bigint[]) "
                "AND status = %s AND superseded = %s RETURNING id, run_id), "
                f"r AS (UPDATE {Run._meta.db_table} SET wake_requested_at = %s "
                "WHERE id = ANY(ARRAY(SELECT run_id FROM s)) AND status = ANY(%s::varchar[]) "
                "RETURNING id, generation) "
                "SELECT s.id, s.run_id, r.generation FROM s LEFT JOIN r ON r.id = s.run_id",
                params,
            )
            return [tuple(row) for row in cur.fetchall()]  # type: ignore[misc]

    def _delete_runs(self, plan: _Plan, ids: list[Any]) -> None:
        """Level by level: the run rows, then every table pointing at them, then every table
        pointing at those; each level's statements sent together (psycopg's pipeline mode),
        so a batch costs four round trips, not one per table. The keys travel as array
        literals (``'{…}'``) from one level's ``RETURNING``, aggregated, to the next level's
        parameters: PostgreSQL parses them and Python never holds the journal's ids one by
        one (dumping 20,000 ids a batch, three times, was half of the prune's time).

        The batch's statements run with generic plans (a custom plan of ``col = ANY(…)``
        estimates each of the 20,000 keys, for each statement; the generic one is an index
        scan, right for keys that are a sliver of any table) and an asynchronous commit (a
        batch lost in a crash is pruned again, its kept gate trails with it).

        And without PostgreSQL's per-row foreign-key checks, when they can only confirm what
        these deletes ensure: each deleted row fires two lookups per foreign key pointing at
        its table (about 80 per run and its journal), measured 20x the deletes themselves.
        ``session_replication_role = replica`` skips them, as a restore does, for these
        statements only, when the role may set it and the catalog agrees with the plan: no
        foreign key points at these tables that the plan does not follow, and no trigger or
        rule would fire on its statements. Writers racing the prune still check their own
        keys: a row added for a run of this batch waits on the run's lock, then fails."""
        qn = connection.ops.quote_name
        rights = _rights(connection.alias)
        pk: Any = Run._meta.pk
        level: list[tuple[Any, Any, str]] = [(Run, pk, _array_literal(ids))]
        # The setup goes with the first level, the keys to clear with the next one.
        pending: list[tuple[str, list[Any]]] = [_setup(plan, rights)]
        before: Any = None  # the settings as they were: (plan_cache_mode, replication role)
        while level or pending:
            statements = pending + [self._delete_sql(plan, m, f, keys) for m, f, keys in level]
            rows = _pipelined(statements)
            before = before or rows[0]
            deeper: list[tuple[Any, Any, str]] = []
            pending = []
            for (model, _, _), row in zip(level, rows[len(rows) - len(level) :], strict=True):
                found = dict(zip(_targets(plan, model), row or (), strict=False))
                for ref in plan[model]:
                    if found.get(ref.target) is None:  # nothing deleted here
                        continue
                    if ref.cascade:
                        deeper.append((ref.model, ref.field, found[ref.target]))
                    else:
                        table, column = qn(ref.model._meta.db_table), qn(ref.field.column)
                        pending.append(
                            (
                                f"UPDATE {table} SET {column} = NULL WHERE {self._any(ref.field)}",
                                [found[ref.target]],
                            )
                        )
            level = deeper
        # As they were for the commit: what the runs_pruning receivers wrote is checked.
        reset = "SELECT set_config('plan_cache_mode', %s, true)"
        if rights.replica:
            reset += ", set_config('session_replication_role', %s, true)"
        with connection.cursor() as cur:
            cur.execute(reset, list(before[: 2 if rights.replica else 1]))

    def _delete_sql(self, plan: _Plan, model: Any, field: Any, keys: str) -> tuple[str, list[Any]]:
        """DELETE the rows of ``model`` whose ``field`` is among ``keys``, returning, as array
        literals, the columns the foreign keys pointing at ``model`` refer to."""
        qn = connection.ops.quote_name
        delete = f"DELETE FROM {qn(model._meta.db_table)} WHERE {self._any(field)}"
        targets = _targets(plan, model)
        if targets:
            returning = ", ".join(qn(c) for c in targets)
            aggregates = ", ".join(
                f"array_agg({qn(c)}) FILTER (WHERE {qn(c)} IS NOT NULL)::text" for c in targets
            )
            delete = f"WITH d AS ({delete} RETURNING {returning}) SELECT {aggregates} FROM d"
        return delete, [keys]

    def _any(self, field: Any) -> str:
        column = connection.ops.quote_name(field.column)
        return f"{column} = ANY(%s::{field.db_type(connection)}[])"


_BACKENDS: dict[str, Storage] = {"postgresql": PostgresStorage(), "sqlite": SQLiteStorage()}


def storage() -> Storage:
    """The implementation for the default database (the portable one for any other)."""
    return _BACKENDS.get(connection.vendor) or _BACKENDS["sqlite"]


def backend(vendor: str) -> Storage:
    return _BACKENDS[vendor]


@dataclass(frozen=True)
class _Ref:
    """A foreign key of ``model`` (``field``) that points at ``target``, a column of the model
    being deleted; ``cascade``: its rows go too, else the key is cleared (SET_NULL)."""

    model: Any
    field: Any
    target: str
    cascade: bool


_Plan = dict[Any, list[_Ref]]


def _delete_plan() -> _Plan | None:
    """For the run and each model a CASCADE reaches from it, the foreign keys to follow when
    its rows are deleted; None when the ORM must do it (see ``SQLiteStorage.prune``)."""
    plan = _relations()
    if plan is None:
        return None
    for model in plan:
        if signals.pre_delete.has_listeners(model) or signals.post_delete.has_listeners(model):
            return None
    return plan


# The prune batch's settings, local to its transaction (``PostgresStorage._delete_runs``),
# after the values they had (``before``).
_SETUP_SQL = """
WITH before AS MATERIALIZED (
    SELECT current_setting('plan_cache_mode') AS plans,
           current_setting('session_replication_role') AS role
)
SELECT plans, role,
       set_config('plan_cache_mode', 'force_generic_plan', true),
       set_config('synchronous_commit', 'off', true){more}
FROM before
"""

# 'replica' unless the catalog shows a foreign key pointing at a table the prune deletes
# from that the plan does not follow (as "table.column>table"; a key of several columns
# never matches), or a trigger or rule its statements would fire (DELETE on those tables,
# UPDATE on the tables whose keys it clears).
_REPLICA_IF_SAFE = """
CASE WHEN NOT EXISTS (
    SELECT fk.relname || '.' ||
           CASE WHEN cardinality(c.conkey) = 1 THEN a.attname ELSE '-' END || '>' || pk.relname
    FROM pg_constraint c
    JOIN pg_class fk ON fk.oid = c.conrelid
    JOIN pg_class pk ON pk.oid = c.confrelid
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    WHERE c.contype = 'f' AND pk.oid = ANY(%s::regclass[])
    EXCEPT SELECT unnest(%s::text[])
) AND NOT EXISTS (
    SELECT 1 FROM pg_trigger t
    WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'
      AND ((t.tgrelid = ANY(%s::regclass[]) AND t.tgtype & 8 <> 0)
        OR (t.tgrelid = ANY(%s::regclass[]) AND t.tgtype & 16 <> 0))
) AND NOT EXISTS (
    SELECT 1 FROM pg_rewrite r WHERE r.ev_class = ANY(%s::regclass[]) AND r.rulename <> '_RETURN'
) THEN 'replica' ELSE role END
"""


def _setup(plan: _Plan, rights: _Rights) -> tuple[str, list[Any]]:
    more, params = "", list[Any]()
    if rights.wal_compression:
        # The first change to a page after a checkpoint logs the whole page: compressed,
        # a batch's WAL measured 13 MB -> 2 MB (it is flushed with the other writers' commits).
        more += (
            ",\n       set_config('wal_compression', CASE current_setting('wal_compression') "
            "WHEN 'off' THEN %s ELSE current_setting('wal_compression') END, true)"
        )
        params.append(rights.wal_compression)
    if rights.replica:
        qn = connection.ops.quote_name
        deleted = sorted(qn(m._meta.db_table) for m in plan)
        updated = sorted(
            {qn(r.model._meta.db_table) for refs in plan.values() for r in refs if not r.cascade}
        )
        followed = sorted(
            f"{r.model._meta.db_table}.{r.field.column}>{m._meta.db_table}"
            for m, refs in plan.items()
            for r in refs
        )
        more += f",\n       set_config('session_replication_role', {_REPLICA_IF_SAFE}, true)"
        params += [deleted, followed, deleted, updated, deleted + updated]
    return _SETUP_SQL.replace("{more}", more), params


def _targets(plan: _Plan, model: Any) -> list[str]:
    """The columns of ``model`` that foreign keys pointing at it refer to."""
    return sorted({ref.target for ref in plan[model]})


def _array_literal(values: list[Any]) -> str:
    """``values`` as a PostgreSQL array literal, each element quoted (any type's text form)."""
    quoted = (str(v).replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{q}"' for q in quoted) + "}"


def _pipelined(statements: list[tuple[str, list[Any]]]) -> list[Any]:
    """Each statement's first row (None when it returns none), the statements sent at once and
    run in order: one round trip (psycopg's pipeline mode) instead of one each."""
    cursors = []
    with connection.connection.pipeline():  # type: ignore[union-attr]
        for sql, params in statements:
            cur = connection.cursor()
            cur.execute(sql, params)
            cursors.append(cur)
    rows = []
    for cur in cursors:
        rows.append(cur.fetchone() if cur.description else None)
        cur.close()
    return rows


@dataclass(frozen=True)
class _Rights:
    """What the prune's database role may set for its own transactions (a superuser, or
    ``GRANT SET ON PARAMETER session_replication_role, wal_compression TO <role>``)."""

    replica: bool
    wal_compression: str | None  # the method to use, when it may set it


@lru_cache(maxsize=8)
def _rights(alias: str) -> _Rights:
    with connections[alias].cursor() as cur:
        if connections[alias].pg_version < 150000:  # type: ignore[attr-defined]
            cur.execute("SELECT rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user")
        else:
            cur.execute(
                "SELECT has_parameter_privilege('session_replication_role', 'SET'), "
                "has_parameter_privilege('wal_compression', 'SET')"
            )
        replica, compress = cur.fetchone() or (False, False)
        method = None
        if compress:
            cur.execute("SELECT enumvals FROM pg_settings WHERE name = 'wal_compression'")
            row = cur.fetchone()
            methods = (row[0] if row else None) or []
            method = "lz4" if "lz4" in methods else "pglz" if "pglz" in methods else None
    return _Rights(replica=bool(replica), wal_compression=method)


@lru_cache(maxsize=1)
def _relations() -> _Plan | None:
    plan: _Plan = {}
    todo: list[Any] = [Run]
    while todo:
        model = todo.pop()
        if model in plan:
            continue
        opts = model._meta
        if opts.parents or any(hasattr(f, "bulk_related_objects") for f in opts.private_fields):
            return None
        refs = []
        rel: Any
        for rel in get_candidate_relations_to_delete(opts):
            if rel.on_delete in SKIP_COLLECTION:  # DO_NOTHING, or the database's own ON DELETE
                continue
            field = rel.field
            if rel.on_delete not in (CASCADE, SET_NULL) or len(field.foreign_related_fields) != 1:
                return None
            ref = _Ref(
                model=rel.related_model,
                field=field,
                target=field.foreign_related_fields[0].column,
                cascade=rel.on_delete is CASCADE,
            )
            refs.append(ref)
            if ref.cascade:
                todo.append(ref.model)
        plan[model] = refs
    return plan


@lru_cache(maxsize=1)
def _insert_run_sql() -> tuple[str, list[Any]]:
    fields: list[Any] = list(Run._meta.local_concrete_fields)
    cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {Run._meta.db_table} ({cols}) VALUES ({values})", fields


@lru_cache(maxsize=1)
def _update_fields() -> list[Any]:
    return [Step._meta.get_field(name) for name in CHECKPOINT_FIELDS]


def _column_sql(field: Any, shape: int, bit: int) -> str:
    """A column's value in a checkpoint statement: a parameter, or, when the row holds the
    field's constant default (bit set in ``shape``), that constant written into the text. A
    step's row mostly holds defaults (no error, no usage, no cost, no lease of its own), and a
    constant costs nothing per execution where a parameter is adapted and sent each time."""
    if shape & (1 << bit):
        return _literal(field)
    return f"%s::{field.db_type(connection)}"


def _literal_default(default: Any) -> bool:
    """Whether a default can be written into a statement as it is (``_literal``): a bool,
    an int, a Decimal or a str without ``%`` (psycopg's placeholder). Anything else (a
    callable, a float, a date, JSON) stays a parameter."""
    if isinstance(default, str):
        return "%" not in default
    return isinstance(default, bool | int | Decimal)


def _literal(field: Any) -> str:
    default = None if field.null and field.default is NOT_PROVIDED else field.get_default()
    if default is None:
        return f"NULL::{field.db_type(connection)}"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, int | Decimal):
        return str(default)
    if isinstance(default, str):
        return "'" + default.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for the default of {field.name}")


def _const(value: Any) -> str:
    """A constant of the engine's own (a status, a flag) written into a statement's text: a
    generic plan can then prove a partial index's predicate (``status = 'pending'``), which it
    cannot for a parameter."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if "'" in text or "%" in text:
        raise ValueError(f"not a plain constant: {text!r}")
    return f"'{text}'"


def _consts(values: Any) -> str:
    return ", ".join(_const(v) for v in values)


def _shared(field: Any, values: list[Any]) -> bool:
    """Whether every row holds the same value of ``field`` (``insert_steps`` then sends it
    once). Strictly the same: of one type (``1 == True`` in Python, not in a column), and
    for JSON the same object or none at all (``[1] == [True]`` and ``[1] == [1.0]``, but
    jsonb keeps them apart). created_at is filled per row when it is missing (``_prep``)."""
    if field.attname == "created_at":
        return False
    first = values[0]
    if field.get_internal_type() == "JSONField":
        return all(v is first for v in values)
    kind = type(first)
    return all(type(v) is kind and v == first for v in values)


@lru_cache(maxsize=64)
def _insert_steps_sql(shape: tuple[bool, ...], lead: bool) -> str:
    """``PostgresStorage.insert_steps``' statement: with ``lead``, first a row of parameters
    (the group's); then each column one parameter where ``shape`` says every other row holds
    the same value, else a column of ``unnest``. Binary parameters (%b): psycopg dumps a
    binary array in half the time of a text one, whose every element it escapes."""
    fields = _insert_fields()
    q = connection.ops.quote_name
    select, arrays = [], []
    for n, (f, same) in enumerate(zip(fields, shape, strict=True)):
        kind = f.db_type(connection)
        if same:
            select.append(f"%b::{kind}")
        else:
            select.append(f"u.c{n}")
            arrays.append((f"%b::{kind}[]", f"c{n}"))
    if not arrays:
        raise ValueError("a fan-out's rows differ at least in their branch")
    cols = ", ".join(q(f.column) for f in fields)
    first = ""
    if lead:
        first = f"SELECT {', '.join(f'%b::{f.db_type(connection)}' for f in fields)} UNION ALL "
    return (
        f"INSERT INTO {Step._meta.db_table} ({cols}) {first}SELECT {', '.join(select)} "
        f"FROM unnest({', '.join(a for a, _ in arrays)}) AS u({', '.join(c for _, c in arrays)}) "
        "RETURNING id, branch"
    )


@lru_cache(maxsize=64)
def _finish_sql(
    names: tuple[str, ...], cost: bool, terminal: bool, branch: bool, hand_over: bool
) -> str:
    """``PostgresStorage.finish_step``'s statement for one shape: the columns it sets,
    whether it adds a cost, whether the outcome is terminal, whether the step is a branch and
    whether its slot is handed over. Statuses and flags are constants in the text."""
    step_table, run_table = Step._meta.db_table, Run._meta.db_table
    q = connection.ops.quote_name
    no, running, pending = _const(False), _const(StepStatus.RUNNING), _const(StepStatus.PENDING)
    active = _consts(ACTIVE_RUN)
    sets = []
    for name in names:
        field: Any = Step._meta.get_field(name)
        sets.append(f"{q(field.column)} = %(f_{name})s::{field.db_type(connection)}")
    if cost:
        sets.append("cost = cost + %(cost)s")
    ctes = [
        f"s AS (UPDATE {step_table} SET {', '.join(sets)} WHERE id = %(id)s "
        f"AND status = {running} AND lease_owner = %(owner)s AND attempt = %(attempt)s "
        f"AND superseded = {no} RETURNING id)"
    ]
    closes = "EXISTS (SELECT 1 FROM s)" if terminal and not branch else "false"
    held = "NULL::bigint, NULL::varchar"
    if terminal and branch:
        failed_status, succeeded = _const(StepStatus.FAILED), _const(StepStatus.SUCCEEDED)
        ctes.append(
            f"g AS (UPDATE {step_table} SET remaining = remaining - 1, "
            "error = CASE WHEN %(failed)s AND error IS NULL THEN %(mark)s ELSE error END, "
            "status = CASE WHEN remaining = 1 THEN CASE WHEN %(failed)s OR error IS NOT NULL "
            f"THEN {failed_status} ELSE {succeeded} END ELSE status END, "
            "finished_at = CASE WHEN remaining = 1 THEN %(now)s ELSE finished_at END "
            "WHERE run_id = %(run)s AND position = %(position)s AND branch = -1 "
            f"AND superseded = {no} AND status = {_const(StepStatus.WAITING)} "
            "AND EXISTS (SELECT 1 FROM s) "
            "RETURNING remaining, COALESCE((args ->> 'held')::boolean, true) AS holds_back)"
        )
        ctes.append(
            f"h AS (UPDATE {step_table} SET held = {no}, wake_at = %(ready_by)s "
            f"WHERE held AND id = (SELECT id FROM {step_table} WHERE run_id = %(run)s "
            f"AND held AND superseded = {no} AND status = {pending} "
            "AND EXISTS (SELECT 1 FROM g WHERE holds_back) "
            "ORDER BY position, branch LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, pool)"
        )
        closes = "EXISTS (SELECT 1 FROM g WHERE remaining = 0)"
        held = "(SELECT id FROM h), (SELECT pool FROM h)"
    if hand_over:
        ctes.append(
            f"n AS (UPDATE {step_table} SET status = {running}, attempt = attempt + 1, "
            "lease_owner = %(owner)s, lease_expires_at = %(until)s, started_at = %(now)s, "
            "finished_at = NULL, wake_at = NULL "
            f"WHERE id = (SELECT w.id FROM {step_table} w JOIN {run_table} x "
            f"ON x.id = w.run_id WHERE w.pool = %(pool)s AND w.status = {pending} "
            f"AND w.held = {no} AND w.superseded = {no} "
            "AND (w.wake_at IS NULL OR w.wake_at <= %(ready_by)s) "
            f"AND x.status IN ({active}) AND EXISTS (SELECT 1 FROM s) "
            "ORDER BY w.id LIMIT 1 FOR UPDATE OF w SKIP LOCKED) RETURNING *)"
        )
        free = "NOT EXISTS (SELECT 1 FROM n)"
        handed = "n"
    else:
        free = "true"
        handed = f"(SELECT * FROM {step_table} WHERE false) n"
    if closes != "false" or cost:
        add = "%(cost)s" if cost else "0"
        # ``t`` locks the run row (only when the run goes on, or for the cost) and decides
        # on its latest version: take its lease if free, else mark it runnable.
        ctes.append(
            f"c AS (SELECT {closes} AS closes), t AS (SELECT r.id, c.closes AND %(take)s "
            f"AND {free} AND r.generation = %(generation)s AND r.status IN ({active}) "
            "AND (r.lease_owner = '' OR r.lease_expires_at < %(now)s) AS take, "
            f"c.closes AND r.status IN ({active}) AS wake FROM {run_table} r, c "
            "WHERE r.id = %(run)s AND EXISTS (SELECT 1 FROM s) "
            f"AND (c.closes OR {add} <> 0) FOR UPDATE OF r)"
        )
        ctes.append(
            f"r AS (UPDATE {run_table} r SET cost = r.cost + {add}, "
            "status = CASE WHEN t.take AND r.status <> "
            f"{_const(RunStatus.COMPENSATING)} THEN {_const(RunStatus.RUNNING)} "
            "ELSE r.status END, "
            "lease_owner = CASE WHEN t.take THEN %(owner)s ELSE r.lease_owner END, "
            "lease_expires_at = CASE WHEN t.take THEN %(until)s ELSE r.lease_expires_at END, "
            "started_at = CASE WHEN t.take THEN COALESCE(r.started_at, %(now)s) "
            "ELSE r.started_at END, wake_requested_at = CASE WHEN t.take THEN NULL "
            "WHEN t.wake THEN %(now)s ELSE r.wake_requested_at END FROM t WHERE r.id = t.id "
            "RETURNING r.*)"
        )
        run_cols = "(SELECT take FROM t), (SELECT wake AND NOT take FROM t)"
        ran = "r"
    else:
        run_cols = "NULL::boolean, NULL::boolean"
        ran = f"(SELECT * FROM {run_table} WHERE false) r"
    return (
        f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM s), {held}, {run_cols}, "
        f"{_columns_sql(Step, 'n')}, {_columns_sql(Run, 'r')} "
        f"FROM (SELECT 1) one LEFT JOIN {handed} ON true LEFT JOIN {ran} ON true"
    )


@lru_cache(maxsize=256)
def _checkpoint_sql(
    run_cols: tuple[str, ...], cost: bool, updates: tuple[int, ...], insert: int
) -> str:
    """The inline checkpoint's statement for one shape (which run columns it sets, whether it
    adds a cost, which journal rows it rewrites and inserts, and which of their columns hold
    their default): a handful of shapes recur for every step, so each is built once, and the
    same text lets psycopg keep it prepared on the server. ``insert`` is -1 for no insert."""
    sets = []
    for name in run_cols:
        field: Any = Run._meta.get_field(name)
        sets.append(f"{connection.ops.quote_name(field.column)} = %s::{field.db_type(connection)}")
    if cost:
        sets.append("cost = cost + %s")
    fence = "WHERE id = %s AND lease_owner = %s AND generation = %s"
    run_table = Run._meta.db_table
    if sets:
        ctes = [f"r AS (UPDATE {run_table} SET {', '.join(sets)} {fence} RETURNING id)"]
    else:
        # Nothing to change on the run: lock it instead of rewriting it. FOR SHARE
        # conflicts with a concurrent cancel/restart UPDATE, and READ COMMITTED re-checks
        # the fence after such a writer commits, so a stale owner still writes nothing.
        ctes = [f"r AS (SELECT id FROM {run_table} {fence} FOR SHARE)"]
    q = connection.ops.quote_name
    for n, shape in enumerate(updates):
        row_sets = ", ".join(
            f"{q(f.column)} = {_column_sql(f, shape, bit)}"
            for bit, f in enumerate(_update_fields())
        )
        ctes.append(
            f"u{n} AS (UPDATE {Step._meta.db_table} SET {row_sets} "
            "WHERE id = %s AND EXISTS (SELECT 1 FROM r))"
        )
    select_new = "NULL::bigint"
    if insert >= 0:
        fields = _insert_fields()
        cols = ", ".join(q(f.column) for f in fields)
        values = ", ".join(_column_sql(f, insert, bit) for bit, f in enumerate(fields))
        ctes.append(
            f"i AS (INSERT INTO {Step._meta.db_table} ({cols}) SELECT {values} "
            "WHERE EXISTS (SELECT 1 FROM r) RETURNING id)"
        )
        select_new = "(SELECT id FROM i)"
    return f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM r), {select_new}"


def _run_value(name: str, value: Any) -> Any:
    return _prep(Run._meta.get_field(name), value, raw=True)


@lru_cache(maxsize=2)
def _take_runs_sql(many: bool) -> str:
    pk_field: Any = Run._meta.pk
    gen_field: Any = Run._meta.get_field("generation")
    status: Any = Run._meta.get_field("status")
    if many:
        keys = (
            f"(id, generation) IN (SELECT * FROM unnest(%s::{pk_field.db_type(connection)}[], "
            f"%s::{gen_field.db_type(connection)}[]))"
        )
    else:
        keys = "id = %s AND generation = %s"
    return (
        f"UPDATE {Run._meta.db_table} "
        "SET status = CASE WHEN status = %s THEN status ELSE %s END, lease_owner = %s, "
        "lease_expires_at = %s, wake_requested_at = NULL, "
        "started_at = COALESCE(started_at, %s) "
        f"WHERE {keys} AND status = ANY(%s::{status.db_type(connection)}[]) "
        f"AND (lease_owner = '' OR lease_expires_at < %s) RETURNING {_columns_sql(Run)}"
    )


@lru_cache(maxsize=2)
def _journal_sql(many: bool) -> str:
    q = connection.ops.quote_name
    pk_field: Any = Run._meta.pk
    fields: list[Any] = [Step._meta.get_field(name) for name in JOURNAL_COLUMNS]
    cols = ", ".join(q(f.column) for f in fields)
    runs = f"ANY(%s::{pk_field.db_type(connection)}[])" if many else "%s"
    return (
        f"SELECT {cols} FROM {Step._meta.db_table} WHERE run_id = {runs} AND NOT superseded "
        "ORDER BY run_id, position, branch"
    )


@lru_cache(maxsize=1)
def _journal_converters() -> list[tuple[int, Any]]:
    return _converters([Step._meta.get_field(name) for name in JOURNAL_COLUMNS])


@lru_cache(maxsize=16)
def _columns_sql(model: type[Run] | type[Step], alias: str = "") -> str:
    """The model's columns in ``concrete_fields`` order (``_model_from`` reads them so)."""
    fields: list[Any] = list(model._meta.concrete_fields)
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + connection.ops.quote_name(f.column) for f in fields)


@lru_cache(maxsize=8)
def _loading(model: type[Run] | type[Step]) -> tuple[list[str], list[tuple[int, Any]]]:
    """A model's attnames in ``_columns_sql`` order, and the (index, field) of each column
    whose value the field converts (JSON text)."""
    fields: list[Any] = list(model._meta.concrete_fields)
    return [f.attname for f in fields], _converters(fields)


def _converters(fields: list[Any]) -> list[tuple[int, Any]]:
    """(index, field) of each of ``fields`` whose value the field converts (JSON text)."""
    return [(i, f) for i, f in enumerate(fields) if hasattr(f, "from_db_value")]


def _converted(row: tuple[Any, ...], convert: list[tuple[int, Any]]) -> list[Any]:
    """A row's values, each column of ``convert`` converted as the ORM does."""
    values = list(row)
    for i, f in convert:
        if values[i] is not None:
            values[i] = f.from_db_value(values[i], None, connection)
    return values


def _model_from[M: (Run, Step)](model: type[M], row: tuple[Any, ...]) -> M:
    """A model instance from a row of ``_columns_sql(model)``, converted as the ORM does."""
    attnames, convert = _loading(model)
    return model.from_db(connection.alias, attnames, _converted(row, convert))


def _fetchall(sql: str, params: list[Any], prepare: bool | None = None) -> list[tuple[Any, ...]]:
    """``_fetchone`` for a statement that returns rows. ``prepare=False``: not prepared, so
    planned for each call with its values (psycopg prepares a statement once it has run
    ``prepare_threshold`` times: 2 here, config/settings.py), except where Django watches
    queries: its cursor takes no ``prepare``, so there the threshold decides."""
    return _on_hot_cursor(sql, params, many=True, prepare=prepare)


def _fetchone(sql: str, params: list[Any] | dict[str, Any], generic: bool = False) -> Any:
    """Run a statement of the engine's per-step path and return its one row.

    Through a psycopg cursor kept for this thread's connection: ``connection.cursor()``
    builds two cursor objects and a wrapper for every statement, a sixth of the Python a step
    costs. The same checks as Django's cursor (the connection open, no broken transaction, the
    driver's errors raised as Django's). Whenever Django watches queries (DEBUG,
    ``CaptureQueriesContext``, an execute wrapper) it goes through Django's cursor, so every
    statement is seen there.

    ``generic``: run it on a generic plan from its first execution on this connection (see
    ``_on_hot_cursor``)."""
    return _on_hot_cursor(sql, params, many=False, generic=generic)


def _on_hot_cursor(
    sql: str,
    params: list[Any] | dict[str, Any],
    many: bool,
    generic: bool = False,
    prepare: bool | None = None,
) -> Any:
    """With ``generic`` (and statements prepared on this connection: not behind PgBouncer),
    the statement is prepared at its first use and sent between ``SET plan_cache_mode =
    force_generic_plan`` and ``RESET`` in one pipeline (one round trip). PostgreSQL plans a
    prepared statement afresh for each of its first five executions on a connection before it
    settles on a generic plan; ``finish_step``'s statement costs 0.65 ms to plan, and the
    twenty branches of a wave that finish together on fresh connections paid that twenty times
    at every wave boundary (W2: 1.16-1.27 x ideal before, 1.07-1.10 after, on fresh workers).
    The setting never outlives the pipeline: RESET restores it, and if the statement fails
    the implicit transaction (or the caller's) rolls the SET back with it. Only statements
    whose constants are written into their text use this (``_const``), so that the generic
    plan can still use the partial indexes (tests/workflows/test_generic_plans.py)."""
    db = connections[DEFAULT_DB_ALIAS]  # one look-up: each ``connection.x`` is one
    if db.queries_logged or db.execute_wrappers:
        with db.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if many else cur.fetchone()
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_thread_sharing()
    db.validate_no_broken_transaction()
    with db.wrap_database_errors:
        raw = db.connection
        held = db.__dict__.get("_sluice_cursor")
        if held is None or held[0] is not raw or held[1].closed:
            # (connection, the statement's cursor, SET's, RESET's, whether to force generic
            # plans): a pipeline keeps each cursor's result. Not behind PgBouncer (no session
            # settings there), and only where statements are prepared and bound on the server.
            cur = raw.cursor()
            force = (
                raw.prepare_threshold is not None
                and not settings.SLUICE_PGBOUNCER
                and not isinstance(cur, ClientCursor)
            )
            held = (raw, cur, raw.cursor(), raw.cursor(), force)
            db.__dict__["_sluice_cursor"] = held
        cur = held[1]
        if generic and held[4]:
            with raw.pipeline():
                held[2].execute("SET plan_cache_mode = force_generic_plan", prepare=True)
                try:
                    cur.execute(sql, params, prepare=True)
                finally:
                    # Queued even when the statement failed in the client (a value psycopg
                    # cannot adapt): the pipeline still sends what it holds, and the SET must
                    # not outlive it. A failure on the server aborts both (and the SET rolls
                    # back with the implicit transaction, or with the caller's).
                    held[3].execute("RESET plan_cache_mode", prepare=True)
        else:
            cur.execute(sql, params, prepare=prepare)
        return cur.fetchall() if many else cur.fetchone()


# How each journal column is passed: 0 as it is, 1 as JSON, 2 created_at (defaulted).
_AS_IS, _JSON, _CREATED = 0, 1, 2


def _attr_specs(fields: list[Any]) -> tuple[tuple[str, int, int, Any], ...]:
    """(attname, how it is passed, its bit in a shape, its constant default) per column; the
    bit is 0 for a column whose default is not a constant (it is always a parameter)."""
    specs = []
    for bit, f in enumerate(fields):
        kind = _AS_IS
        if f.get_internal_type() == "JSONField":
            kind = _JSON
        elif f.attname == "created_at":
            kind = _CREATED
        flag, default = 0, None
        if f.has_default() and _literal_default(f.default):
            flag, default = 1 << bit, f.default
        elif f.null and not f.has_default():
            flag = 1 << bit  # NULL
        specs.append((f.attname, kind, flag, default))
    return tuple(specs)


@lru_cache(maxsize=1)
def _insert_fields() -> list[Any]:
    """The journal columns a checkpoint inserts (all but the primary key)."""
    return [f for f in Step._meta.concrete_fields if not f.primary_key]


@lru_cache(maxsize=1)
def _insert_specs() -> tuple[tuple[str, int, int, Any], ...]:
    return _attr_specs(_insert_fields())


@lru_cache(maxsize=1)
def _update_specs() -> tuple[tuple[str, int, int, Any], ...]:
    return _attr_specs(_update_fields())


def _row_params(row: Step, specs: tuple[tuple[str, int, int, Any], ...]) -> tuple[int, list[Any]]:
    """The shape of a journal row (a bit per column holding its constant default) and the
    parameters of the others, prepared as ``_prep`` does, without a field lookup per value
    (this runs for every step)."""
    values = row.__dict__
    out: list[Any] = []
    shape = 0
    for attname, kind, flag, default in specs:
        value = values[attname] if attname in values else getattr(row, attname)
        if flag and (
            value is None
            if default is None
            else (type(value) is type(default) and value == default)
        ):
            shape |= flag
            continue
        if kind == _JSON:
            texts = values.get(_TEXTS)
            held = texts.get(attname) if texts else None
            if held is not None and held[0] is value:
                value = Jsonb(held[1], dumps=str)  # the text as it is (json_text)
            else:
                value = None if value is None else Jsonb(value)
        elif kind == _CREATED and value is None:
            value = row.started_at or clock.now()
        out.append(value)
    return shape, out


_TEXTS = "_sluice_json_text"


def json_text(row: Step, attname: str, text: str | None) -> None:
    """Remember that ``row``'s JSON column ``attname`` (as it is now) encodes as ``text``, so
    the checkpoint sends that text instead of encoding the value a second time. Keyed on the
    value object: a column assigned anything else afterwards is encoded as usual."""
    texts = row.__dict__.setdefault(_TEXTS, {})
    if text is None:
        texts.pop(attname, None)
    else:
        texts[attname] = (row.__dict__[attname], text)


def _prep(field: Any, obj: Any, raw: bool = False) -> Any:
    value = obj if raw else getattr(obj, field.attname)
    if field.get_internal_type() == "JSONField":
        return None if value is None else Jsonb(value)
    if value is None and field.attname == "created_at":
        return obj.started_at or clock.now()
    return value
