"""The storage contract (workflows/core/storage.py): one suite, each backend.

Every test runs once per backend; the one matching the test database runs, the other is
skipped. ``make test`` runs [a] on PostgreSQL (PostgresStorage) and [b], the ``core`` marker,
on SQLite (SQLiteStorage), so both implementations pass the same suite in every run.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from workflows.core.models import (
    Blob,
    Event,
    Outbox,
    Run,
    RunAudit,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
)
from workflows.core.pools import RESERVED
from workflows.core.storage import (
    BRANCH_FAILED,
    CHECKPOINT_FIELDS,
    JOURNAL_COLUMNS,
    PostgresStorage,
    SQLiteStorage,
    Storage,
    backend,
    storage,
)

pytestmark = [pytest.mark.core, pytest.mark.django_db]


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest) -> Storage:
    vendor = request.param
    if connection.vendor != vendor:
        pytest.skip(f"the {vendor} implementation runs when the test database is {vendor}")
    impl = backend(vendor)
    assert storage() is impl
    assert isinstance(impl, PostgresStorage if vendor == "postgresql" else SQLiteStorage)
    return impl


def make_run(**fields: Any) -> Run:
    return Run.objects.create(workflow="contract.test", **fields)


def make_step(run: Run, position: int = 1, **fields: Any) -> Step:
    values: dict[str, Any] = {"kind": StepKind.STEP, "name": "s", "status": StepStatus.PENDING}
    values.update(fields)
    return Step.objects.create(run=run, position=position, **values)


# --- runs ------------------------------------------------------------------------------------


def test_take_run_takes_a_free_run_once(store: Storage) -> None:
    run = make_run()
    now = timezone.now()
    taken = store.take_run(run.pk, 1, "w1", now)
    assert taken is not None and taken.pk == run.pk
    assert (taken.status, taken.lease_owner) == (RunStatus.RUNNING, "w1")
    assert taken.lease_expires_at > now and taken.started_at is not None
    assert store.take_run(run.pk, 1, "w2", now) is None  # held by w1
    assert Run.objects.get(pk=run.pk).lease_owner == "w1"


def test_take_run_refuses_a_stale_generation_and_a_terminal_run(store: Storage) -> None:
    now = timezone.now()
    run = make_run(generation=2)
    assert store.take_run(run.pk, 1, "w1", now) is None
    done = make_run(status=RunStatus.SUCCEEDED)
    assert store.take_run(done.pk, 1, "w1", now) is None
    assert Run.objects.get(pk=done.pk).status == RunStatus.SUCCEEDED


def test_take_run_takes_over_an_expired_lease(store: Storage) -> None:
    now = timezone.now()
    run = make_run(
        status=RunStatus.RUNNING, lease_owner="dead", lease_expires_at=now - timedelta(seconds=1)
    )
    taken = store.take_run(run.pk, 1, "w2", now)
    assert taken is not None and taken.lease_owner == "w2"


def test_a_taken_run_holds_what_the_orm_reads(store: Storage) -> None:
    """PostgreSQL builds the taken runs from its cursor's rows instead of a RawQuerySet: every
    column must come back as the ORM reads it (JSON decoded, aware datetimes, Decimal, UUID)."""
    run = make_run(
        input={"doc": "x", "n": [1, 2]},
        context={"tenant": "acme"},
        tenant="acme",
        max_cost=Decimal("1.50"),
        cost=Decimal("0.25"),
    )
    taken = store.take_runs([(run.pk, 1)], "w1", timezone.now())
    assert len(taken) == 1
    fresh = Run.objects.get(pk=run.pk)
    for f in Run._meta.concrete_fields:
        assert getattr(taken[0], f.attname) == getattr(fresh, f.attname), f.attname
    assert taken[0]._state.adding is False and taken[0]._state.db == "default"
    assert taken[0].started_at is not None and taken[0].started_at.tzinfo is not None


def test_take_runs_returns_only_the_runs_it_took(store: Storage) -> None:
    now = timezone.now()
    free, held, stale = make_run(), make_run(), make_run(generation=2)
    assert store.take_run(held.pk, 1, "other", now) is not None
    taken = store.take_runs([(free.pk, 1), (held.pk, 1), (stale.pk, 1)], "w1", now)
    assert [r.pk for r in taken] == [free.pk]
    assert store.take_runs([], "w1", now) == []


def test_a_compensating_run_keeps_its_status_when_taken(store: Storage) -> None:
    """Saga: a taken run is "running", except a compensating one, which stays compensating
    while its undos run (the lease says who holds it); one at a time and in a burst alike."""
    now = timezone.now()
    alone = make_run(status=RunStatus.COMPENSATING, after_compensation=RunStatus.FAILED)
    taken = store.take_run(alone.pk, 1, "w1", now)
    assert taken is not None
    assert (taken.status, taken.lease_owner) == (RunStatus.COMPENSATING, "w1")
    assert Run.objects.get(pk=alone.pk).status == RunStatus.COMPENSATING
    assert store.take_run(alone.pk, 1, "w2", now) is None  # held by w1
    undoing = make_run(status=RunStatus.COMPENSATING, after_compensation=RunStatus.CANCELED)
    pending, suspended = make_run(), make_run(status=RunStatus.SUSPENDED)
    burst = store.take_runs([(undoing.pk, 1), (pending.pk, 1), (suspended.pk, 1)], "w1", now)
    assert {r.pk: (r.status, r.lease_owner) for r in burst} == {
        undoing.pk: (RunStatus.COMPENSATING, "w1"),
        pending.pk: (RunStatus.RUNNING, "w1"),
        suspended.pk: (RunStatus.RUNNING, "w1"),
    }
    assert Run.objects.get(pk=undoing.pk).status == RunStatus.COMPENSATING


def test_checkpoint_writes_everything_while_the_run_is_ours(store: Storage) -> None:
    now = timezone.now()
    run = make_run()
    assert store.take_run(run.pk, 1, "w1", now) is not None
    prev = make_step(run, 1, status=StepStatus.RUNNING, attempt=1)
    prev.status, prev.result, prev.finished_at = StepStatus.SUCCEEDED, {"v": 1}, now
    new = Step(
        run_id=run.pk, position=2, kind=StepKind.STEP, name="next", status=StepStatus.RUNNING
    )
    new.attempt, new.started_at = 1, now
    ok = store.checkpoint(
        run_id=run.pk,
        owner="w1",
        generation=1,
        fields={"current_step": "next"},
        cost=Decimal("0.25"),
        dirty=[prev],
        inserts=[new],
    )
    assert ok and new.pk is not None
    fresh = Run.objects.get(pk=run.pk)
    assert (fresh.current_step, fresh.cost) == ("next", Decimal("0.25"))
    assert Step.objects.get(pk=prev.pk).result == {"v": 1}
    assert Step.objects.get(pk=new.pk).name == "next"


def _write(store: Storage, run: Run, prev: Step, new: Step) -> bool:
    """A checkpoint by w1 that rewrites ``prev`` and inserts ``new``, nothing on the run."""
    return store.checkpoint(
        run_id=run.pk,
        owner="w1",
        generation=1,
        fields={},
        cost=Decimal(0),
        dirty=[prev],
        inserts=[new],
    )


def _columns(row: Step) -> dict[str, Any]:
    fields = [f.attname for f in Step._meta.concrete_fields if f.attname not in ("id",)]
    return {name: getattr(row, name) for name in fields}


@pytest.mark.parametrize("defaults", [True, False], ids=["defaults", "every-column-set"])
def test_checkpoint_stores_every_column_as_given(store: Storage, defaults: bool) -> None:
    """PostgreSQL writes a column holding its constant default as a constant in the
    statement's text and sends only the others (one statement per shape): both kinds of row
    must read back exactly as given, on every column, updated as well as inserted."""
    now = timezone.now().replace(microsecond=0)
    later = now + timedelta(seconds=5)
    run = make_run()
    assert store.take_run(run.pk, 1, "w1", now) is not None
    other: dict[str, Any] = {
        "generation": 1,
        "superseded": True,
        "branch": 3,
        "held": True,
        "attempt": 2,
        "max_attempts": 5,
        "target": "pkg.mod.fn",
        "args": {"args": [1], "kwargs": {"k": "v"}},
        "undo": "pkg.mod.undo",
        "digest": "d" * 32,
        "result": [1, "two", None],
        "error": {"type": "ValueError", "message": "it's"},
        "wake_at": later,
        "remaining": 4,
        "lease_owner": "w9",
        "lease_expires_at": later,
        "usage": {"input_tokens": 3},
        "cost": Decimal("0.125000"),
        "started_at": now,
        "finished_at": later,
        "pool": "llm",
        "kind": StepKind.STEP,
    }
    prev = make_step(run, 1, status=StepStatus.RUNNING, attempt=1)
    if defaults:
        prev.status, prev.finished_at = StepStatus.SUCCEEDED, later
    else:
        for name in CHECKPOINT_FIELDS:
            setattr(prev, name, other.get(name))
        prev.status = StepStatus.RETRYING
    new = Step.new(run_id=run.pk, position=2, kind=StepKind.STEP, name="n", status="running")
    if not defaults:
        for name, value in other.items():
            setattr(new, name, value)
    expect_prev, expect_new = _columns(prev), _columns(new)
    assert _write(store, run, prev, new)
    got_prev = _columns(Step.objects.get(pk=prev.pk))
    got_new = _columns(Step.objects.get(pk=new.pk))
    for got, expect in ((got_prev, expect_prev), (got_new, expect_new)):
        expect.pop("created_at"), got.pop("created_at")
        assert got == expect


def test_checkpoint_stores_a_json_column_reassigned_after_its_text_was_kept(
    store: Storage,
) -> None:
    """``json_text`` keeps the encoded text of a column's value; a column assigned another
    value afterwards must be stored as that value, not as the kept text."""
    from workflows.core.storage import json_text

    now = timezone.now()
    run = make_run()
    assert store.take_run(run.pk, 1, "w1", now) is not None
    prev = make_step(run, 1, status=StepStatus.RUNNING, attempt=1)
    prev.result = {"kept": True}
    json_text(prev, "result", '{"kept":true}')
    prev.result = {"replaced": 1}  # a new object: the kept text no longer describes it
    new = Step.new(run_id=run.pk, position=2, kind=StepKind.STEP, name="n", status="running")
    new.args = {"args": [2], "kwargs": {}}
    json_text(new, "args", '{"args":[2],"kwargs":{}}')
    assert _write(store, run, prev, new)
    assert Step.objects.get(pk=prev.pk).result == {"replaced": 1}
    assert Step.objects.get(pk=new.pk).args == {"args": [2], "kwargs": {}}


def test_checkpoint_statements_are_seen_by_query_capture_and_errors_are_djangos(
    store: Storage,
) -> None:
    """The per-step statement may bypass Django's cursor wrapper for speed, but never where
    Django is watching queries, and a driver error still arrives as Django's."""
    from django.db import IntegrityError, transaction
    from django.test.utils import CaptureQueriesContext

    now = timezone.now()
    run = make_run()
    assert store.take_run(run.pk, 1, "w1", now) is not None

    def insert(position: int) -> bool:
        row = Step.new(
            run_id=run.pk, position=position, kind=StepKind.STEP, name="n", status="running"
        )
        return store.checkpoint(
            run_id=run.pk,
            owner="w1",
            generation=1,
            fields={},
            cost=Decimal(0),
            dirty=[],
            inserts=[row],
        )

    with CaptureQueriesContext(connection) as seen:
        assert insert(1)
    assert len(seen.captured_queries) >= 1
    assert insert(2)  # not watched: the fast path
    with pytest.raises(IntegrityError), transaction.atomic():
        insert(2)  # the live position is taken
    assert Step.objects.filter(run=run).count() == 2


def test_checkpoint_of_a_run_no_longer_ours_writes_nothing(store: Storage) -> None:
    now = timezone.now()
    run = make_run()
    assert store.take_run(run.pk, 1, "w1", now) is not None
    Run.objects.filter(pk=run.pk).update(generation=2)  # canceled/restarted meanwhile
    prev = make_step(run, 1, status=StepStatus.RUNNING)
    prev.status = StepStatus.SUCCEEDED
    new = Step(run_id=run.pk, position=2, kind=StepKind.STEP, name="n", status="running")
    for fields in ({}, {"current_step": "n"}):  # with and without a run column to write
        ok = store.checkpoint(
            run_id=run.pk,
            owner="w1",
            generation=1,
            fields=fields,
            cost=Decimal(1),
            dirty=[prev],
            inserts=[new],
        )
        assert not ok
    assert Step.objects.get(pk=prev.pk).status == StepStatus.RUNNING
    assert Step.objects.filter(run=run).count() == 1
    assert Run.objects.get(pk=run.pk).cost == 0


def test_checkpoint_ends_a_run_with_many_new_rows(store: Storage) -> None:
    now = timezone.now()
    run = make_run()
    assert store.take_run(run.pk, 1, "w1", now) is not None
    rows = [
        Step(run_id=run.pk, position=p, kind="now", name="now", status="succeeded", result=p)
        for p in (1, 2)
    ]
    ended = {"status": RunStatus.SUCCEEDED, "output": {"ok": True}, "lease_owner": ""}
    assert store.checkpoint(
        run_id=run.pk,
        owner="w1",
        generation=1,
        fields=ended,
        cost=Decimal(0),
        dirty=[],
        inserts=rows,
    )
    fresh = Run.objects.get(pk=run.pk)
    assert (fresh.status, fresh.output, fresh.lease_owner) == ("succeeded", {"ok": True}, "")
    assert sorted(Step.objects.filter(run=run).values_list("result", flat=True)) == [1, 2]


def test_reclaim_run_frees_only_an_expired_lease(store: Storage) -> None:
    now = timezone.now()
    live = make_run(status="running", lease_owner="w", lease_expires_at=now + timedelta(seconds=60))
    dead = make_run(status="running", lease_owner="w", lease_expires_at=now - timedelta(seconds=1))
    assert not store.reclaim_run(live, now)
    assert store.reclaim_run(dead, now)
    fresh = Run.objects.get(pk=dead.pk)
    assert (fresh.lease_owner, fresh.wake_requested_at) == ("", now)
    assert not store.reclaim_run(dead, now)  # the sweep's view is stale now: nothing happens


def test_reclaim_run_frees_an_expired_compensating_lease_keeping_its_status(
    store: Storage,
) -> None:
    now = timezone.now()
    dead = make_run(
        status=RunStatus.COMPENSATING, lease_owner="w", lease_expires_at=now - timedelta(seconds=1)
    )
    assert store.reclaim_run(dead, now)
    fresh = Run.objects.get(pk=dead.pk)
    assert (fresh.status, fresh.lease_owner, fresh.wake_requested_at) == (
        RunStatus.COMPENSATING,
        "",
        now,
    )


# --- steps -----------------------------------------------------------------------------------


def test_claim_takes_a_pending_step_once(store: Storage) -> None:
    now = timezone.now()
    row = make_step(make_run(), wake_at=now)
    assert store.claim(row.pk, "w1", now)
    assert not store.claim(row.pk, "w2", now)
    fresh = Step.objects.get(pk=row.pk)
    assert (fresh.status, fresh.attempt, fresh.lease_owner, fresh.wake_at) == (
        "running",
        1,
        "w1",
        None,
    )
    held = make_step(make_run(), held=True)
    assert not store.claim(held.pk, "w1", now)


def test_claim_reserved_takes_a_reserved_slot_of_an_active_run(store: Storage) -> None:
    now = timezone.now()
    reserved = {
        "status": StepStatus.RUNNING,
        "lease_owner": RESERVED,
        "lease_expires_at": now + timedelta(seconds=60),
        "branch": 0,
    }
    row = make_step(make_run(status="suspended"), **reserved)
    got = store.claim_reserved(row.pk, "w1", now)
    assert got is not None and (got.lease_owner, got.attempt) == ("w1", 1)
    assert store.claim_reserved(row.pk, "w2", now) is None
    canceled = make_step(make_run(status="canceled"), **reserved)
    assert store.claim_reserved(canceled.pk, "w1", now) is None


def test_claim_reserved_many_takes_each_reserved_slot_for_its_own_owner(store: Storage) -> None:
    now = timezone.now()
    later = now + timedelta(seconds=60)
    run = make_run(status="suspended")

    def slot(branch: int, owner: str = RESERVED, until: Any = later) -> Step:
        return make_step(
            run, 1, branch=branch, status="running", lease_owner=owner, lease_expires_at=until
        )

    a, b = slot(0), slot(1)
    taken_elsewhere, expired = slot(2, owner="w9"), slot(3, until=now)
    got = store.claim_reserved_many(
        [(a.pk, "j1"), (b.pk, "j2"), (taken_elsewhere.pk, "j3"), (expired.pk, "j4")], now
    )
    assert {pk: (r.lease_owner, r.attempt) for pk, r in got.items()} == {
        a.pk: ("j1", 1),
        b.pk: ("j2", 1),
    }
    assert Step.objects.get(pk=b.pk).lease_owner == "j2"
    assert store.claim_reserved_many([(a.pk, "j5")], now) == {}
    assert store.claim_reserved_many([], now) == {}


def test_complete_is_fenced_on_owner_and_attempt(store: Storage) -> None:
    now = timezone.now()
    row = make_step(make_run(), status="running", lease_owner="w1", attempt=2)
    stale = Step.objects.get(pk=row.pk)
    stale.attempt = 1
    done = {"status": StepStatus.SUCCEEDED, "result": 7, "finished_at": now, "lease_owner": ""}
    assert not store.complete(stale, "w1", done)  # an earlier attempt's worker
    assert not store.complete(row, "w2", done)  # another owner
    assert store.complete(row, "w1", done)
    assert Step.objects.get(pk=row.pk).result == 7
    assert not store.complete(row, "w1", done)  # no longer running


def test_hand_over_claims_the_oldest_waiting_step_of_the_pool(store: Storage) -> None:
    now = timezone.now()
    run = make_run(status="suspended")
    first = make_step(run, 1, pool="llm")
    make_step(run, 2, pool="llm")
    make_step(make_run(status="canceled"), 1, pool="gpu")
    got = store.hand_over("llm", "w1", now, now)
    assert got is not None and got.pk == first.pk
    assert Step.objects.get(pk=first.pk).lease_owner == "w1"
    assert store.hand_over("gpu", "w1", now, now) is None  # its run is over
    later = make_step(run, 3, pool="cpu", wake_at=now + timedelta(minutes=5))
    assert store.hand_over("cpu", "w1", now, now) is None  # not due yet
    assert store.hand_over("cpu", "w1", now, now + timedelta(minutes=6)).pk == later.pk  # type: ignore[union-attr]


def test_fire_timer_ends_a_sleep_and_times_out_a_wait_with_its_default(store: Storage) -> None:
    now = timezone.now()
    run = make_run(status="suspended")
    sleep = make_step(run, 1, kind="sleep", name="sleep", status="waiting", wake_at=now)
    wait = make_step(
        run, 2, kind="event", name="ok", status="waiting", wake_at=now, args={"default": "no"}
    )
    assert store.fire_timer(sleep, now) and store.fire_timer(wait, now)
    assert not store.fire_timer(sleep, now)
    s, w = Step.objects.get(pk=sleep.pk), Step.objects.get(pk=wait.pk)
    assert s.status == "succeeded" and s.usage is None
    assert (w.status, w.result, w.usage) == ("succeeded", "no", {"timed_out": True})


def test_reclaim_step_is_fenced_on_the_lease_the_sweep_saw(store: Storage) -> None:
    row = make_step(make_run(), status="running", lease_owner="dead", attempt=1, branch=0)
    seen = Step.objects.get(pk=row.pk)
    Step.objects.filter(pk=row.pk).update(lease_owner="alive", attempt=2)  # re-claimed
    pending = {"status": StepStatus.PENDING, "lease_owner": "", "lease_expires_at": None}
    assert not store.reclaim_step(seen, pending)
    assert store.reclaim_step(Step.objects.get(pk=row.pk), pending)
    assert Step.objects.get(pk=row.pk).status == StepStatus.PENDING


def test_insert_run_stores_what_save_stores(store: Storage) -> None:
    """Every column, each kind of field (JSON, decimal, duration, foreign keys, timestamps set
    on insert): the row inserted by the storage reads back as the one save() inserts."""
    parent = make_run()
    fields: dict[str, Any] = {
        "workflow": "contract.test",
        "version": 3,
        "input": {"text": "hé", "n": [1, 2.5, None], "nested": {"ok": True}},
        "context": {"trace": "t-1"},
        "idempotency_key": None,
        "parent": parent,
        "max_parallel": 7,
        "wake_requested_at": timezone.now(),
        "tenant": "acme",
        "created_by": "api:sk_1234",
        "callback_url": "https://example.com/hook",
        "max_cost": Decimal("1.250000"),
        "review_timeout": timedelta(hours=36),
    }
    mine = Run(**{**fields, "idempotency_key": "k-storage"})
    store.insert_run(mine)
    assert not mine._state.adding and mine.created_at is not None
    theirs = Run(**{**fields, "idempotency_key": "k-save"})
    theirs.save(force_insert=True)
    names = [f.attname for f in Run._meta.concrete_fields]
    ours, saved = (Run.objects.filter(pk=r.pk).values(*names).get() for r in (mine, theirs))
    differ = {"id", "idempotency_key", "created_at", "updated_at"}
    assert {n: ours[n] for n in names if n not in differ} == {
        n: saved[n] for n in names if n not in differ
    }
    assert ours["idempotency_key"] == "k-storage"
    assert abs(ours["created_at"] - saved["created_at"]) < timedelta(seconds=5)


def test_insert_run_refuses_a_duplicate_idempotency_key(store: Storage) -> None:
    from django.db import IntegrityError, transaction

    store.insert_run(Run(workflow="contract.test", idempotency_key="once"))
    with pytest.raises(IntegrityError), transaction.atomic():
        store.insert_run(Run(workflow="contract.test", idempotency_key="once"))


def test_insert_steps_sets_primary_keys_and_the_last_branch_closes_the_group(
    store: Storage,
) -> None:
    run = make_run(status="suspended")
    group = make_step(run, 1, kind="parallel", name="parallel", status="waiting", remaining=9)
    group.args = {"held": False}
    group.save()
    branches = [
        Step(run_id=run.pk, position=1, branch=b, kind="step", name="b", status="pending")
        for b in range(9)  # wide enough for PostgreSQL's unnest() form
    ]
    store.insert_steps(branches)
    assert all(b.pk for b in branches)
    assert Step.objects.filter(run=run, branch__gte=0).count() == 9
    left = [store.decrement_group(b) for b in branches]
    assert [x[1] for x in left if x] == list(range(8, -1, -1))
    assert {x[0] for x in left if x} == {group.pk}
    assert all(x is not None and x[2] is False for x in left)
    lone = make_step(run, 2, branch=0)
    assert store.decrement_group(lone) is None  # no group at its position


@pytest.mark.parametrize("width", [3, 12], ids=["few", "unnest"])
@pytest.mark.parametrize("with_group", [True, False], ids=["group", "branches-only"])
def test_insert_steps_stores_every_column_as_given(
    store: Storage, width: int, with_group: bool
) -> None:
    """PostgreSQL sends a column that every branch shares as one parameter, the others as
    arrays, and the group's row as a row of its own: every row must read back exactly as
    given, whichever columns the branches share."""
    now = timezone.now().replace(microsecond=0)
    run = make_run(status="suspended")
    rows = []
    if with_group:
        rows.append(
            Step.new(
                run_id=run.pk,
                position=1,
                branch=-1,
                kind=StepKind.PARALLEL,
                name="parallel:b",
                status=StepStatus.WAITING,
                remaining=width,
                started_at=now,
                digest="g" * 32,
                args={"branches": width, "held": True},
            )
        )
    for b in range(width):
        reserved = b < 2
        rows.append(
            Step.new(
                run_id=run.pk,
                position=1,
                branch=b,
                kind=StepKind.BRANCH,
                name="b",
                pool="llm",
                held=b >= width - 1,
                target="pkg.mod.fn",
                undo="pkg.mod.undo",
                args={"args": [b], "kwargs": {}},
                max_attempts=4,
                wake_at=now,
                status=StepStatus.RUNNING if reserved else StepStatus.PENDING,
                lease_owner=RESERVED if reserved else "",
                lease_expires_at=now + timedelta(seconds=b) if reserved else None,
            )
        )
    expected = [_columns(row) for row in rows]
    store.insert_steps(rows)
    for row, expect in zip(rows, expected, strict=True):
        assert row.pk is not None
        got = _columns(Step.objects.get(pk=row.pk))
        expect.pop("created_at"), got.pop("created_at")  # stamped on insert
        assert got == expect, row.branch


def test_insert_steps_keeps_values_python_calls_equal_apart(store: Storage) -> None:
    """``[1] == [True] == [1.0]`` in Python, not in a jsonb column: a column is sent once for
    every row only when the rows hold strictly the same value."""
    run = make_run(status="suspended")
    kinds: list[Any] = [[1], [True], [1.0]]
    rows = [
        Step.new(
            run_id=run.pk,
            position=1,
            branch=b,
            kind=StepKind.BRANCH,
            name="b",
            status=StepStatus.PENDING,
            args={"args": [b], "kwargs": {}},
            result=kinds[b % 3],
        )
        for b in range(9)
    ]
    store.insert_steps(rows)
    got = {r.branch: r.result for r in Step.objects.filter(run=run)}
    for b in range(9):
        assert got[b] == kinds[b % 3] and type(got[b][0]) is type(kinds[b % 3][0]), (b, got[b])


def test_end_runs_ends_only_the_runs_still_ours(store: Storage) -> None:
    now = timezone.now()
    mine, restarted, taken_over = make_run(), make_run(), make_run()
    for run in (mine, restarted, taken_over):
        assert store.take_run(run.pk, 1, "w1", now) is not None
    Run.objects.filter(pk=restarted.pk).update(generation=2)
    Run.objects.filter(pk=taken_over.pk).update(lease_owner="w2")

    def end(output: Any) -> dict[str, Any]:
        return {
            "status": RunStatus.SUCCEEDED,
            "output": output,
            "error": None,
            "finished_at": now,
            "lease_owner": "",
            "lease_expires_at": None,
            "wake_requested_at": None,
            "current_step": "last",
        }

    ended = store.end_runs(
        "w1", [(mine.pk, 1, end({"n": 1})), (restarted.pk, 1, end(2)), (taken_over.pk, 1, end(3))]
    )
    assert {str(pk) for pk in ended} == {str(mine.pk)}
    fresh = Run.objects.get(pk=mine.pk)
    assert (fresh.status, fresh.output, fresh.lease_owner, fresh.current_step) == (
        RunStatus.SUCCEEDED,
        {"n": 1},
        "",
        "last",
    )
    assert fresh.finished_at == now and fresh.lease_expires_at is None
    for other in (restarted, taken_over):
        assert Run.objects.get(pk=other.pk).status == RunStatus.RUNNING  # untouched
    assert store.end_runs("w1", []) == set()


def test_resolve_waits_resolves_live_waits_once_and_wakes_active_runs(store: Storage) -> None:
    now = timezone.now()
    active, ended = make_run(status="suspended"), make_run(status="canceled")
    waiting = make_step(active, 1, kind="gate", name="g", status="waiting")
    of_ended = make_step(ended, 1, kind="gate", name="g", status="waiting")
    superseded = make_step(active, 2, kind="gate", name="g", status="waiting", superseded=True)
    done = make_step(active, 3, kind="gate", name="g", status="succeeded")
    fields: dict[str, Any] = {
        "status": StepStatus.SUCCEEDED,
        "result": {"outcome": "approve"},
        "finished_at": now,
    }
    got = store.resolve_waits([waiting.pk, of_ended.pk, superseded.pk, done.pk], fields, now)
    assert sorted((pk, str(run_id), gen) for pk, run_id, gen in got) == sorted(
        [(waiting.pk, str(active.pk), 1), (of_ended.pk, str(ended.pk), None)]
    )
    row = Step.objects.get(pk=waiting.pk)
    assert (row.status, row.result, row.finished_at) == ("succeeded", {"outcome": "approve"}, now)
    assert Step.objects.get(pk=superseded.pk).status == "waiting"
    assert Run.objects.get(pk=active.pk).wake_requested_at == now
    assert Run.objects.get(pk=ended.pk).wake_requested_at is None  # not active: not woken
    assert store.resolve_waits([waiting.pk], fields, now) == []  # no longer waiting
    assert store.resolve_waits([], fields, now) == []


# --- retention ---------------------------------------------------------------------------------


def _history(now: Any) -> dict[str, Any]:
    """Old finished runs with a journal and what points at them, and runs that must stay."""
    old = now - timedelta(days=10)
    parent = make_run(status=RunStatus.SUCCEEDED, finished_at=old - timedelta(hours=2))
    call = make_step(parent, 1, kind=StepKind.CHILD, status=StepStatus.SUCCEEDED)
    gone = make_run(status=RunStatus.FAILED, finished_at=old - timedelta(hours=1))
    make_step(gone, 1, status=StepStatus.SUCCEEDED)
    make_step(gone, 2, status=StepStatus.FAILED)
    waited = make_step(gone, 3, kind=StepKind.EVENT, status=StepStatus.SUCCEEDED)
    Event.objects.create(run=gone, name="go", consumed_by=waited)
    Blob.objects.create(run=gone, data="x" * 10, size=10)
    RunAudit.objects.create(run=gone, generation=1, action="retry")
    Outbox.objects.create(run=gone, kind="webhook", key="k-gone", status="delivered")
    # A young child of the old parent (started by its step) and a fork of the failed run:
    # they stay, their references cleared.
    child = make_run(status=RunStatus.SUCCEEDED, finished_at=now, parent=parent, parent_step=call)
    fork = make_run(status=RunStatus.RUNNING, forked_from=gone, forked_at_step=2)
    young = make_run(status=RunStatus.SUCCEEDED, finished_at=now - timedelta(days=1))
    make_step(young, 1, status=StepStatus.SUCCEEDED)
    # Active runs are never pruned, however old.
    stuck = make_run(status=RunStatus.SUSPENDED, finished_at=old)
    make_step(stuck, 1, kind=StepKind.SLEEP, status=StepStatus.WAITING)
    return {"parent": parent, "gone": gone, "child": child, "fork": fork, "young": young,
            "stuck": stuck, "cutoff": now - timedelta(days=5)}  # fmt: skip


def _check_pruned(h: dict[str, Any]) -> None:
    old = [h["parent"].pk, h["gone"].pk]
    assert not Run.objects.filter(pk__in=old).exists()
    assert set(Run.objects.values_list("pk", flat=True)) == {
        h[k].pk for k in ("child", "fork", "young", "stuck")
    }
    assert not Step.objects.filter(run_id__in=old).exists()
    assert Step.objects.filter(run_id__in=[h["young"].pk, h["stuck"].pk]).count() == 2
    assert not Event.objects.exists() and not Blob.objects.exists()
    assert not RunAudit.objects.exists()
    assert Outbox.objects.get(key="k-gone").run_id is None  # SET_NULL: the delivery log stays
    child = Run.objects.get(pk=h["child"].pk)
    assert (child.parent_id, child.parent_step_id) == (None, None)
    assert Run.objects.get(pk=h["fork"].pk).forked_from_id is None


def test_prune_deletes_old_finished_runs_with_what_points_at_them(store: Storage) -> None:
    h = _history(timezone.now())
    seen: list[Any] = []
    assert store.prune(h["cutoff"], 1, before_delete=seen.extend) == 1  # oldest first
    assert seen == [h["parent"].pk]
    assert store.prune(h["cutoff"], 100, before_delete=seen.extend) == 1
    assert seen == [h["parent"].pk, h["gone"].pk]
    assert store.prune(h["cutoff"], 100) == 0
    _check_pruned(h)


def test_prune_deletes_nothing_when_before_delete_raises(store: Storage) -> None:
    h = _history(timezone.now())

    def refuse(run_ids: list[Any]) -> None:
        raise RuntimeError("keep them")

    with pytest.raises(RuntimeError):
        store.prune(h["cutoff"], 100, before_delete=refuse)
    assert Run.objects.count() == 6 and Step.objects.count() == 6
    assert Event.objects.count() == 1 and Outbox.objects.get(key="k-gone").run_id == h["gone"].pk


def test_prune_without_the_right_to_skip_key_checks_does_the_same(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database role that may not set session_replication_role or wal_compression: the
    foreign keys are checked row by row, the outcome is the same."""
    if store.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite always checks its keys")
    from workflows.core import storage as module

    monkeypatch.setattr(module, "_rights", lambda alias: module._Rights(False, None))
    h = _history(timezone.now())
    assert store.prune(h["cutoff"], 100) == 2
    _check_pruned(h)


@pytest.mark.django_db(transaction=True)
def test_prune_keeps_the_key_checks_for_a_foreign_key_it_does_not_know(store: Storage) -> None:
    """A table outside the models pointing at runs: the prune cannot follow it, so the
    database's own check must refuse the delete at commit rather than leave an orphan."""
    if store.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite always checks its keys")
    from django.db import IntegrityError

    now = timezone.now()
    run = make_run(status=RunStatus.SUCCEEDED, finished_at=now - timedelta(days=10))
    with connection.cursor() as cur:
        cur.execute(
            "CREATE TABLE contract_extra (run_id uuid REFERENCES workflows_run (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        try:
            cur.execute("INSERT INTO contract_extra VALUES (%s)", [run.pk])
            with pytest.raises(IntegrityError):
                store.prune(now - timedelta(days=5), 100)
            assert Run.objects.filter(pk=run.pk).exists()
        finally:
            cur.execute("DROP TABLE contract_extra")


# --- finishing a queued step -----------------------------------------------------------------


def fan_out(width: int, *, run_status: str = "suspended", held_from: int | None = None) -> Any:
    """A suspended run with a group of ``width`` branches, all running under w0..w{n-1}."""
    run = make_run(status=run_status)
    group = make_step(
        run,
        1,
        kind="parallel",
        name="parallel",
        status="waiting",
        remaining=width,
        args={"held": held_from is not None},
    )
    branches = [
        make_step(
            run,
            1,
            branch=b,
            status="running" if held_from is None or b < held_from else "pending",
            held=held_from is not None and b >= held_from,
            lease_owner=f"w{b}",
            attempt=1,
            pool="llm",
        )
        for b in range(width)
    ]
    return run, group, branches


def finish(
    store: Storage,
    row: Step,
    owner: str,
    status: str = StepStatus.SUCCEEDED,
    *,
    cost: Decimal = Decimal(0),
    hand_over: bool = False,
    take_run: bool = True,
) -> Any:
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "lease_owner": "",
        "lease_expires_at": None,
    }
    if status == StepStatus.SUCCEEDED:
        fields["result"] = {"b": row.branch}
    else:
        fields["error"] = {"type": "Boom", "message": "boom"}
    if status == StepStatus.RETRYING:
        fields["wake_at"] = now + timedelta(seconds=30)
    return store.finish_step(
        row,
        owner,
        fields,
        cost=cost,
        now=now,
        ready_by=now + timedelta(seconds=5),
        hand_over=hand_over,
        take_run=take_run,
    )


def test_finish_step_is_fenced_and_changes_nothing_when_not_ours(store: Storage) -> None:
    run, group, (a, b) = fan_out(2)
    assert finish(store, a, "w1") is None  # another owner
    stale = Step.objects.get(pk=b.pk)
    stale.attempt = 0
    assert finish(store, stale, "w1") is None  # an earlier attempt
    assert Step.objects.get(pk=group.pk).remaining == 2
    assert Step.objects.get(pk=a.pk).status == "running"
    assert Run.objects.get(pk=run.pk).lease_owner == ""


def test_the_last_branch_closes_its_group_and_takes_the_run(store: Storage) -> None:
    run, group, branches = fan_out(3)
    for row in branches[:2]:
        done = finish(store, row, row.lease_owner)
        assert done is not None and (done.run, done.wake, done.next) == (None, None, None)
    assert Step.objects.get(pk=group.pk).remaining == 1
    assert Run.objects.get(pk=run.pk).lease_owner == ""
    last = finish(store, branches[2], "w2")
    assert last is not None and last.run is not None and last.wake is None
    assert (last.run.pk, last.run.status, last.run.lease_owner) == (run.pk, "running", "w2")
    fresh = Run.objects.get(pk=run.pk)
    assert (fresh.status, fresh.lease_owner, fresh.wake_requested_at) == ("running", "w2", None)
    assert fresh.lease_expires_at is not None
    closed = Step.objects.get(pk=group.pk)
    assert (closed.status, closed.remaining, closed.error) == ("succeeded", 0, None)
    assert Step.objects.get(pk=branches[2].pk).result == {"b": 2}


def test_a_failed_branch_marks_its_group_which_closes_failed(store: Storage) -> None:
    run, group, (a, b, c) = fan_out(3)
    assert finish(store, a, "w0", StepStatus.FAILED) is not None
    assert finish(store, b, "w1", StepStatus.FAILED) is not None
    assert Step.objects.get(pk=group.pk).status == "waiting"
    assert finish(store, c, "w2") is not None
    closed = Step.objects.get(pk=group.pk)
    assert (closed.status, closed.error) == ("failed", BRANCH_FAILED)


def test_a_retrying_branch_does_not_count_its_group_down(store: Storage) -> None:
    run, group, (a, _) = fan_out(2)
    done = finish(store, a, "w0", StepStatus.RETRYING)
    assert done is not None and done.run is None
    assert Step.objects.get(pk=group.pk).remaining == 2
    assert Step.objects.get(pk=a.pk).status == "retrying"


def test_the_last_branch_wakes_a_run_someone_holds(store: Storage) -> None:
    run, group, (a,) = fan_out(1, run_status="running")
    Run.objects.filter(pk=run.pk).update(
        lease_owner="advancer", lease_expires_at=timezone.now() + timedelta(seconds=60)
    )
    done = finish(store, a, "w0")
    assert done is not None and done.run is None and done.wake == run.generation
    fresh = Run.objects.get(pk=run.pk)
    assert fresh.lease_owner == "advancer" and fresh.wake_requested_at is not None


def test_a_worker_handed_a_step_wakes_the_run_instead_of_taking_it(store: Storage) -> None:
    run, group, (a,) = fan_out(1)
    waiting = make_step(make_run(status="suspended"), 1, pool="llm")
    done = finish(store, a, "w0", hand_over=True)
    assert done is not None and done.next is not None and done.next.pk == waiting.pk
    assert (done.next.status, done.next.lease_owner, done.next.attempt) == ("running", "w0", 1)
    assert done.run is None and done.wake == run.generation
    assert Run.objects.get(pk=run.pk).wake_requested_at is not None
    fresh = Step.objects.get(pk=waiting.pk)
    assert (fresh.status, fresh.lease_owner) == ("running", "w0")


def test_without_take_run_the_last_branch_only_wakes_the_run(store: Storage) -> None:
    run, group, (a,) = fan_out(1)
    done = finish(store, a, "w0", take_run=False)
    assert done is not None and done.run is None and done.wake == run.generation
    assert Run.objects.get(pk=run.pk).status == "suspended"


def test_a_finishing_branch_lets_the_next_held_branch_go(store: Storage) -> None:
    run, group, branches = fan_out(4, held_from=2)
    done = finish(store, branches[0], "w0")
    assert done is not None and done.released == (branches[2].pk, "llm")
    assert not Step.objects.get(pk=branches[2].pk).held
    assert Step.objects.get(pk=branches[3].pk).held
    done = finish(store, branches[1], "w1", StepStatus.FAILED)
    assert done is not None and done.released == (branches[3].pk, "llm")


def test_finish_step_adds_the_cost_to_the_step_and_the_run(store: Storage) -> None:
    run, group, (a, b) = fan_out(2)
    assert finish(store, a, "w0", StepStatus.RETRYING, cost=Decimal("0.25")) is not None
    assert Run.objects.get(pk=run.pk).cost == Decimal("0.25")
    assert Step.objects.get(pk=a.pk).cost == Decimal("0.25")


def test_a_queued_step_that_is_not_a_branch_takes_its_run(store: Storage) -> None:
    run = make_run(status="suspended")
    row = make_step(run, 1, status="running", lease_owner="w0", attempt=1, pool="llm")
    done = finish(store, row, "w0", StepStatus.FAILED)
    assert done is not None and done.run is not None and done.run.lease_owner == "w0"
    assert Step.objects.get(pk=row.pk).status == "failed"


def test_decrement_group_marks_a_failed_branch(store: Storage) -> None:
    run, group, (a, b) = fan_out(2)
    assert store.decrement_group(a, failed=True) == (group.pk, 1, False)
    assert Step.objects.get(pk=group.pk).error == BRANCH_FAILED
    assert store.decrement_group(b) == (group.pk, 0, False)
    assert Step.objects.get(pk=group.pk).error == BRANCH_FAILED


def test_only_plain_constant_defaults_are_written_into_the_statement() -> None:
    """A default the checkpoint cannot write as SQL text stays a parameter (a float, a date,
    JSON, a callable, a str with psycopg's ``%``), instead of failing every checkpoint."""
    from datetime import date

    from workflows.core.storage import _literal_default

    for ok in (False, True, 0, -1, Decimal("0"), "", "default"):
        assert _literal_default(ok), ok
    for refused in (0.5, date(2026, 1, 1), {}, [], dict, None, "100%"):
        assert not _literal_default(refused), refused


def test_journal_rows_are_the_live_rows_in_replay_order_as_the_orm_reads_them(
    store: Storage,
) -> None:
    """PostgreSQL reads the journal on its own cursor and converts the JSON columns itself:
    every value must be what the ORM reads, superseded rows left out, in (run, position,
    branch) order, for several runs at once."""
    now = timezone.now()
    first, second, other = make_run(), make_run(), make_run()
    make_step(second, 2, status=StepStatus.SUCCEEDED, result={"b": [1, 2.5]}, finished_at=now)
    make_step(first, 3, status=StepStatus.FAILED, error={"type": "X", "message": "é"})
    make_step(first, 1, status=StepStatus.SUCCEEDED, result=None, cost=Decimal("0.125"))
    make_step(first, 1, superseded=True, status=StepStatus.SUCCEEDED, result="old")
    make_step(
        first,
        2,
        branch=-1,
        kind=StepKind.PARALLEL,
        name="parallel:b",
        status=StepStatus.SUCCEEDED,
        args={"branches": 2},
    )
    for b in (1, 0):
        make_step(
            first,
            2,
            branch=b,
            kind=StepKind.BRANCH,
            name="b",
            status=StepStatus.SUCCEEDED,
            result=[b, "x"],
            usage={"input_tokens": 3},
        )
    make_step(other, 1, status=StepStatus.SUCCEEDED, result=1)
    got = store.journal_rows([second.pk, first.pk])
    orm = list(
        Step.objects.filter(run_id__in=[first.pk, second.pk], superseded=False)
        .order_by("run_id", "position", "branch")
        .values_list(*JOURNAL_COLUMNS)
    )
    assert got == orm
    position, branch, result = (JOURNAL_COLUMNS.index(n) for n in ("position", "branch", "result"))
    mine = [row for row in got if row[JOURNAL_COLUMNS.index("run_id")] == first.pk]
    assert [(row[position], row[branch]) for row in mine] == [
        (1, -1),
        (2, -1),
        (2, 0),
        (2, 1),
        (3, -1),
    ]
    assert mine[3][result] == [1, "x"] and "old" not in [row[result] for row in got]
    assert store.journal_rows([]) == []
