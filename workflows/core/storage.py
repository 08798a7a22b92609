"""The storage contract: the engine's compare-and-swap writes, one interface, two backends.

As DBOS has one system-database interface with a PostgreSQL and a SQLite implementation, the
engine talks to its tables through ``Storage`` for the writes that decide who owns what:

===============  ===========================================================================
take_run(s)      pending/suspended/expired run → running under this worker's lease (a
                 compensating run keeps its status)
checkpoint       previous results + next step "running, attempt n" + lease, fenced on the run
claim            a queued step (pending, or a slot reserved at fan-out) → running
complete         running → succeeded | retrying | failed, fenced on owner and attempt
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
data-modifying CTEs for the inline checkpoint (one statement, one commit), SKIP LOCKED for the
hand-over, unnest() for wide fan-outs. Where the portable statement is already a single
conditional UPDATE (complete, fire_timer, reclaim) PostgreSQL inherits it unchanged: there is
nothing to gain, and one definition cannot drift. ``tests/workflows/test_storage_contract.py``
runs one suite against whichever backend the test database is (both run in ``make test``).

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

from django.db import connection, connections, transaction
from django.db.models import CASCADE, SET_NULL, F, Q, signals
from django.db.models.deletion import SKIP_COLLECTION, get_candidate_relations_to_delete
from django.utils import timezone
from psycopg.types.json import Jsonb

from workflows.core.leases import lease_until
from workflows.core.models import (
    ACTIVE_RUN,
    LEASED_RUN,
    TERMINAL_RUN,
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
    def complete(self, row: Step, owner: str, fields: dict[str, Any]) -> bool:
        """A running step we hold (owner, attempt, live) → ``fields["status"]``."""

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
    def insert_steps(self, rows: list[Step]) -> None:
        """Insert journal rows (a fan-out's branches) and set their primary keys."""

    @abstractmethod
    def decrement_group(self, row: Step) -> tuple[int, int, bool] | None:
        """``remaining - 1`` on the branch's group: (group id, remaining, holds back)."""

    # --- retention ------------------------------------------------------------------------

    @abstractmethod
    def prune(
        self,
        cutoff: datetime,
        limit: int,
        before_delete: Callable[[list[Any]], object] | None = None,
    ) -> int:
        """Delete up to ``limit`` runs that finished (terminal) before ``cutoff``, oldest first,
        with every row their foreign keys reach (CASCADE deletes, SET_NULL clears), in one
        transaction; the number of runs deleted (0: none left). ``before_delete(run_ids)`` is
        called first in that transaction, so whatever it raises rolls the batch back."""


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
            )
            return Step.objects.get(pk=step_id) if n == 1 else None

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

    def insert_steps(self, rows: list[Step]) -> None:
        Step.objects.bulk_create(rows)

    def decrement_group(self, row: Step) -> tuple[int, int, bool] | None:
        group = Step.objects.filter(
            run_id=row.run_id, position=row.position, branch=-1, superseded=False
        )
        with transaction.atomic(savepoint=False):
            if not group.update(remaining=F("remaining") - 1):
                return None
            found = group.values_list("id", "remaining", "args").first()
        if found is None:
            return None
        return found[0], found[1], bool((found[2] or {}).get("held", True))

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
            # Locked (PostgreSQL; SQLite's IMMEDIATE transaction holds the write lock): a
            # restart of one of these runs waits, then finds it gone.
            ids = list(
                Run.objects.filter(status__in=TERMINAL_RUN, finished_at__lt=cutoff)
                .order_by("finished_at")
                .select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:limit]
            )
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
    ``take_run(s)`` (UPDATE … RETURNING on both), ``claim``, ``complete``, ``fire_timer``,
    ``reclaim_step`` and ``reclaim_run``: one conditional UPDATE each on both backends."""

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
        params: list[Any] = []
        sets = []
        for name, value in fields.items():
            field: Any = Run._meta.get_field(name)
            sets.append(
                f"{connection.ops.quote_name(field.column)} = %s::{field.db_type(connection)}"
            )
            params.append(_prep(field, value, raw=True))
        if cost:
            sets.append("cost = cost + %s")
            params.append(cost)
        fence = "WHERE id = %s AND lease_owner = %s AND generation = %s"
        run_table = Run._meta.db_table
        if sets:
            ctes = [f"r AS (UPDATE {run_table} SET {', '.join(sets)} {fence} RETURNING id)"]
        else:
            # Nothing to change on the run: lock it instead of rewriting it. FOR SHARE
            # conflicts with a concurrent cancel/restart UPDATE, and READ COMMITTED re-checks
            # the fence after such a writer commits, so a stale owner still writes nothing.
            ctes = [f"r AS (SELECT id FROM {run_table} {fence} FOR SHARE)"]
        params += [run_id, owner, generation]
        upd_sql, upd_fields = _update_sql()
        for n, row in enumerate(dirty):
            ctes.append(f"u{n} AS ({upd_sql} WHERE id = %s AND EXISTS (SELECT 1 FROM r))")
            params += [_prep(f, row) for f in upd_fields]
            params.append(row.pk)
        select_new = "NULL::bigint"
        if inserts:
            ins_sql, ins_fields = _insert_sql()
            ctes.append(f"i AS ({ins_sql} WHERE EXISTS (SELECT 1 FROM r) RETURNING id)")
            params += [_prep(f, inserts[0]) for f in ins_fields]
            select_new = "(SELECT id FROM i)"
        sql = f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM r), {select_new}"
        with connection.cursor() as cur:
            cur.execute(sql, params)
            ok, new_id = cur.fetchone()
        if ok and inserts:
            inserts[0].pk = new_id
            inserts[0]._state.adding = False
        return bool(ok)

    def claim_reserved(self, step_id: int, owner: str, now: datetime) -> Step | None:
        table = Step._meta.db_table
        active = ", ".join(["%s"] * len(ACTIVE_RUN))
        rows = list(
            Step.objects.raw(
                f"UPDATE {table} SET attempt = attempt + 1, lease_owner = %s, "
                "lease_expires_at = %s, started_at = %s WHERE id = %s AND status = %s "
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

    def hand_over(self, pool: str, owner: str, now: datetime, ready_by: datetime) -> Step | None:
        """One statement: pick the oldest waiting step nobody else is taking (SKIP LOCKED)
        and claim it."""
        table = Step._meta.db_table
        active = ", ".join(["%s"] * len(ACTIVE_RUN))
        rows = list(
            Step.objects.raw(
                f"UPDATE {table} SET status = %s, attempt = attempt + 1, lease_owner = %s, "
                "lease_expires_at = %s, started_at = %s, wake_at = NULL WHERE id = ("
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

    def insert_steps(self, rows: list[Step]) -> None:
        """``INSERT … SELECT FROM unnest(arrays)``: a column an array instead of a parameter
        per value, measured about 3x faster than ``bulk_create`` for 100 branches."""
        if len(rows) < 8:
            Step.objects.bulk_create(rows)
            return
        fields: list[Any] = [f for f in Step._meta.concrete_fields if not f.primary_key]
        cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
        arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields)
        params = [[_prep(f, row) for row in rows] for f in fields]
        with connection.cursor() as cur:
            cur.execute(
                f"INSERT INTO {Step._meta.db_table} ({cols}) SELECT * FROM unnest({arrays}) "
                "RETURNING id, branch",
                params,
            )
            ids = dict((branch, pk) for pk, branch in cur.fetchall())
        for row in rows:
            row.pk = ids[row.branch]
            row._state.adding = False

    def decrement_group(self, row: Step) -> tuple[int, int, bool] | None:
        run_pk = Run._meta.pk.get_db_prep_value(row.run_id, connection)  # type: ignore[union-attr]
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE {Step._meta.db_table} SET remaining = remaining - 1 WHERE run_id = %s "
                "AND position = %s AND branch = -1 AND superseded = %s "
                "RETURNING id, remaining, args",
                [run_pk, row.position, False],
            )
            found = cur.fetchone()
        if not found:
            return None
        args = found[2]
        if isinstance(args, str):
            args = json.loads(args)
        return found[0], found[1], bool((args or {}).get("held", True))

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
def _insert_sql() -> tuple[str, list[Any]]:
    fields: list[Any] = [f for f in Step._meta.concrete_fields if not f.primary_key]
    cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    casts = ", ".join(f"%s::{f.db_type(connection)}" for f in fields)
    return f"INSERT INTO {Step._meta.db_table} ({cols}) SELECT {casts}", fields


@lru_cache(maxsize=1)
def _update_sql() -> tuple[str, list[Any]]:
    fields: list[Any] = [Step._meta.get_field(name) for name in CHECKPOINT_FIELDS]
    sets = ", ".join(
        f"{connection.ops.quote_name(f.column)} = %s::{f.db_type(connection)}" for f in fields
    )
    return f"UPDATE {Step._meta.db_table} SET {sets}", fields


def _prep(field: Any, obj: Any, raw: bool = False) -> Any:
    value = obj if raw else getattr(obj, field.attname)
    if field.get_internal_type() == "JSONField":
        return None if value is None else Jsonb(value)
    if value is None and field.attname == "created_at":
        return obj.started_at or timezone.now()
    return value
