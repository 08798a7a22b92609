"""A branch's completion runs on a generic plan (``storage._on_hot_cursor(generic=True)``).

A generic plan is made without the parameters' values, so it can use a partial index only
when the statement's own text proves the index's predicate: the statuses and flags of
``finish_step``'s statement are written into it (``storage._const``). The first test takes
every shape of that statement, plans it generically against a journal whose statistics look
like a working system's, and checks the two lookups that need a partial index: the hand-over
finds the pool's oldest waiting step through ``step_busy`` and the group its row through
``step_unique_live_position`` (a constant turned back into a parameter fails it). Every other
table in the statement is reached by its primary key, so "no Seq Scan" is only a floor.

The others check that the setting stays inside the statement's pipeline: after a completion,
after one that failed on the server and after one that failed in the client; and that a
doorbell's take of one run, left to PostgreSQL's own choice of a generic plan, reaches the run
by its primary key, while a batch's take (arrays of pairs) is planned with its values.
"""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import DataError, connection, transaction
from django.utils import timezone

from workflows.core import storage as module
from workflows.core.models import Run, RunStatus, Step, StepKind, StepStatus
from workflows.core.storage import PostgresStorage, storage

pytestmark = [pytest.mark.core, pytest.mark.django_db]

FIELDS = ("finished_at", "lease_owner", "lease_expires_at", "status", "result", "error")


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no plan cache")


def _generic_plan(sql: str, seqscan: bool = False) -> str:
    """EXPLAIN of ``sql`` (named or positional placeholders) prepared and planned
    generically; sequential scans disabled unless ``seqscan``."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        name = m.group(1) or str(len(names))
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = re.sub(r"%(?:\((\w+)\))?s", number, sql)
    nulls = ", ".join(["NULL"] * len(names))
    with connection.cursor() as cur:
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute(f"SET enable_seqscan = {'on' if seqscan else 'off'}")
        cur.execute(f"PREPARE sluice_plan_check AS {text}")
        try:
            cur.execute(f"EXPLAIN EXECUTE sluice_plan_check({nulls})" if names else "SELECT 1")
            plan = "\n".join(row[0] for row in cur.fetchall())
        finally:
            cur.execute("DEALLOCATE sluice_plan_check")
        cur.execute("RESET enable_seqscan")
        cur.execute("RESET plan_cache_mode")
    return plan


SHAPES = [
    (names, cost, terminal, branch, hand_over)
    for names, cost, terminal, branch, hand_over in itertools.product(
        (FIELDS, (*FIELDS, "usage"), ("finished_at", "lease_owner", "status", "error", "wake_at")),
        (False, True),
        (True, False),
        (True, False),
        (True, False),
    )
    # A retry is never terminal and sets wake_at; the other field lists are terminal ones.
    if terminal == ("wake_at" not in names)
]


def _history() -> None:
    """A journal whose statistics look like a working system's, so that the planner chooses
    between indexes as it would there (on empty tables every index costs the same): many runs
    of finished steps, a few hundred waits, and branches waiting in another pool."""
    runs = Run.objects.bulk_create(
        Run(workflow="plans.history", status=RunStatus.SUCCEEDED) for _ in range(120)
    )
    rows = []
    for n, run in enumerate(runs):
        for position in range(1, 51):
            rows.append(
                Step(
                    run=run,
                    position=position,
                    kind=StepKind.STEP,
                    name="s",
                    status=StepStatus.SUCCEEDED,
                )
            )
        if n % 4 == 0:
            rows += [
                Step(
                    run=run,
                    position=60 + i,
                    kind=StepKind.EVENT,
                    name="e",
                    status=StepStatus.WAITING,
                )
                for i in range(10)
            ]
            rows += [
                Step(
                    run=run,
                    position=80,
                    branch=i,
                    kind=StepKind.BRANCH,
                    name="b",
                    pool="other",
                    status=StepStatus.PENDING,
                )
                for i in range(10)
            ]
    Step.objects.bulk_create(rows, batch_size=2000)
    with connection.cursor() as cur:
        cur.execute("ANALYZE workflows_step")
        cur.execute("ANALYZE workflows_run")


def test_every_shape_reaches_the_journal_and_the_runs_by_an_index() -> None:
    _history()
    for shape in SHAPES:
        plan = _generic_plan(module._finish_sql(*shape))
        assert "Seq Scan on workflows_step" not in plan, (shape, plan)
        assert "Seq Scan on workflows_run" not in plan, (shape, plan)
        names, cost, terminal, branch, hand_over = shape
        if hand_over:
            # The oldest waiting step of the pool: only step_busy covers the pool and status
            # (a partial index on the statuses that hold a slot), and only a constant status
            # proves its predicate.
            handing = _cte(plan, "n")
            assert "step_busy" in handing, (shape, handing)
        if terminal and branch:
            # The group's row by its live place (run, position, branch): the unique index on
            # rows not superseded, which only a constant flag proves.
            assert "step_unique_live_position" in _cte(plan, "g"), (shape, plan)


def _cte(plan: str, name: str) -> str:
    """The lines of one CTE's node in an EXPLAIN text."""
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"CTE {name}")
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return "\n".join(block)


@pytest.mark.parametrize("history", [False, True], ids=["few runs", "a history"])
def test_a_doorbell_takes_its_run_by_the_primary_key_at_any_size(history: bool) -> None:
    """PostgreSQL settles on a generic plan after five executions on a connection, chosen from
    the statistics of that moment. Taking one run must then be the primary key's index, with
    sequential scans allowed as the planner would weigh them, whether the table is new (a
    deployment's first runs, the bench's after its TRUNCATE) or holds a history. Through
    ``IN (SELECT … unnest(…))`` the generic plan was a sequential scan of every run, joined to
    a hash of the pairs, in both cases (W1: 0.33 ms a take at 600 runs)."""
    _table_of(history)
    plan = _generic_plan(module._take_runs_sql(False), seqscan=True)
    assert "workflows_run_pkey" in plan and "Seq Scan" not in plan, plan


def _table_of(history: bool) -> None:
    """A journal as a working system has it, or new tables (never analyzed) with a few rows:
    the TRUNCATE, rolled back with the test, also forgets what an earlier test's ANALYZE
    wrote into the catalog (that is not transactional)."""
    if history:
        _history()
        return
    with connection.cursor() as cur:
        cur.execute("TRUNCATE workflows_run, workflows_step CASCADE")
    runs = Run.objects.bulk_create(Run(workflow="plans.few") for _ in range(3))
    Step.objects.bulk_create(
        Step(run=run, position=1, kind=StepKind.STEP, name="s", status=StepStatus.SUCCEEDED)
        for run in runs
    )


@pytest.mark.parametrize("history", [False, True], ids=["new tables", "a history"])
def test_a_replay_reads_its_journal_through_the_live_rows_index(history: bool) -> None:
    """One run's journal (``journal_rows``, prepared) reads its live rows in order through
    ``step_unique_live_position`` on its generic plan, sequential scans allowed."""
    _table_of(history)
    plan = _generic_plan(module._journal_sql(False), seqscan=True)
    assert "step_unique_live_position" in plan and "Seq Scan" not in plan, plan


def test_a_fan_outs_reservation_counts_the_pools_running_steps_through_step_busy() -> None:
    """``pools.reserve`` (prepared after its second use) counts the pool's running steps
    through the partial index on the statuses that hold a slot, on its generic plan too: its
    status is written into the text."""
    from workflows.core.pools import _reserve_sql

    _history()
    plan = _generic_plan(_reserve_sql(True), seqscan=True)
    assert "step_busy" in plan and "Seq Scan on workflows_step" not in plan, plan


def test_batches_are_planned_with_their_values_and_one_run_is_prepared() -> None:
    """The statements of arrays (the take and the journal of several runs, a batch doorbell's
    claim, a burst's ends) are never prepared, so never put on a generic plan, which for a
    join to ``unnest`` depends on the table's size when it is made; the take and the journal
    of one run are prepared like the other per-step statements."""
    threshold = connection.connection.prepare_threshold
    if threshold is None:
        pytest.skip("nothing is prepared here (SLUICE_PG_PREPARE=0 or PgBouncer)")
    store = storage()
    now = timezone.now()
    runs = Run.objects.bulk_create(Run(workflow="plans.batch") for _ in range(threshold + 4))
    for a, b in itertools.pairwise(runs):
        store.take_runs([(a.pk, 1), (b.pk, 1)], "w", now)
        store.journal_rows([a.pk, b.pk])
    for run in runs:
        store.take_runs([(run.pk, 1)], "w", now)
        store.journal_rows([run.pk])
    # The other statements of arrays: a batch doorbell's claim, a burst's ends.
    slots = [
        Step.objects.create(
            run=runs[0],
            position=1,
            branch=b,
            kind=StepKind.BRANCH,
            name="b",
            status=StepStatus.RUNNING,
            lease_owner=module.RESERVED,
            lease_expires_at=now + timedelta(minutes=1),
        )
        for b in range(2)
    ]
    ends = [(run.pk, 1, {"status": RunStatus.SUCCEEDED, "finished_at": now}) for run in runs[:2]]
    for _ in range(threshold + 2):
        store.claim_reserved_many([(slot.pk, "j") for slot in slots], now)
        store.end_runs("nobody", ends)
    with connection.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cur.fetchall()]
    takes = [text for text in prepared if text.startswith("UPDATE workflows_run SET status")]
    journals = [text for text in prepared if "AND NOT superseded ORDER BY run_id" in text]
    assert takes and journals, prepared
    assert not any("unnest" in text for text in takes), takes
    assert not any("run_id = ANY" in text for text in journals), journals
    assert not any("unnest(" in text for text in prepared), prepared


def test_a_constant_that_is_not_plain_is_refused() -> None:
    with pytest.raises(ValueError):
        module._const("it's")
    with pytest.raises(ValueError):
        module._const("100%")
    assert module._const(StepStatus.PENDING) == "'pending'"
    assert module._const(False) == "false"


def _plan_mode() -> str:
    with connection.cursor() as cur:
        cur.execute("SHOW plan_cache_mode")
        return cur.fetchone()[0]


def _running_branch() -> tuple[Run, Step]:
    now = timezone.now()
    run = Run.objects.create(workflow="plans.test", status=RunStatus.SUSPENDED)
    Step.objects.create(
        run=run,
        position=1,
        branch=-1,
        kind=StepKind.PARALLEL,
        name="p",
        status=StepStatus.WAITING,
        remaining=2,
        args={"branches": 2, "held": False},
    )
    step = Step.objects.create(
        run=run,
        position=1,
        branch=0,
        kind=StepKind.BRANCH,
        name="b",
        pool="default",
        status=StepStatus.RUNNING,
        attempt=1,
        lease_owner="me",
        lease_expires_at=now + timedelta(minutes=1),
    )
    return run, step


def _succeed(step: Step, *, cost: Decimal, hand_over: bool, **more: Any) -> Any:
    """``finish_step`` of a running branch held by "me": succeeded, with ``more`` columns."""
    now = timezone.now()
    fields = {
        "finished_at": now,
        "lease_owner": "",
        "lease_expires_at": None,
        "status": StepStatus.SUCCEEDED,
        "result": 1,
        "error": None,
        **more,
    }
    return storage().finish_step(
        step, "me", fields, cost=cost, now=now, ready_by=now, hand_over=hand_over, take_run=True
    )


def test_the_setting_ends_with_the_statement() -> None:
    store = storage()
    assert isinstance(store, PostgresStorage)
    before = _plan_mode()
    assert before != "force_generic_plan"
    run, step = _running_branch()
    done = _succeed(step, cost=Decimal("0.5"), hand_over=True)
    assert done is not None
    step.refresh_from_db()
    assert step.status == StepStatus.SUCCEEDED and step.cost == Decimal("0.5")
    assert Run.objects.get(pk=run.pk).cost == Decimal("0.5")
    assert Step.objects.get(run=run, branch=-1).remaining == 1
    assert _plan_mode() == before
    # It ran prepared, on a generic plan (the pipeline's setting, not PostgreSQL's own choice,
    # which makes five custom plans first).
    with connection.cursor() as cur:
        cur.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH s AS (UPDATE workflows_step SET%%'"
        )
        plans = cur.fetchall()
    assert plans and all(g >= 1 and c == 0 for g, c in plans), plans


def test_a_failing_statement_leaves_the_setting_as_it_was() -> None:
    """The statement fails inside the pipeline: the SET is rolled back with it, and the
    connection's next statement is planned as before."""
    before = _plan_mode()
    run, step = _running_branch()
    with pytest.raises(DataError), transaction.atomic():
        # A cost past the column's precision (numeric(14, 6)) makes the statement fail.
        _succeed(step, cost=Decimal("1e20"), hand_over=False)
    assert _plan_mode() == before
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING


@pytest.mark.django_db(transaction=True)
def test_a_statement_that_fails_in_the_client_leaves_the_setting_as_it_was() -> None:
    """In autocommit, a value psycopg cannot adapt fails the statement before it is sent,
    after the SET was: the RESET still goes, and nothing of the step changes."""
    before = _plan_mode()
    run, step = _running_branch()
    with pytest.raises(Exception):  # noqa: B017 (psycopg's adaptation error, wrapped or not)
        _succeed(step, cost=Decimal(0), hand_over=True, usage={"x": object()})
    assert _plan_mode() == before
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING
