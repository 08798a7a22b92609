"""A run ends once: a ``run_finished`` receiver that raises (or breaks the transaction with a
failed statement) is logged and rolled back alone; it never makes the engine end the run again,
so ``on_complete`` runs exactly once, with the run's real status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from tests import sample_workflows as samples
from tests.support import Bell
from tests.workflows import hooks
from workflows import get_run, send_event, start
from workflows.core.executor import advance_many
from workflows.core.signals import run_finished
from workflows.models import Outbox, Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def broken_receiver(sender: Any, run: Any, **kwargs: Any) -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM no_such_table_for_sluice")  # aborts the transaction on PG


def raising_receiver(sender: Any, run: Any, **kwargs: Any) -> None:
    raise RuntimeError("receiver exploded")


def orm_error_receiver(sender: Any, run: Any, **kwargs: Any) -> None:
    """Found by review: a failed ORM statement marks the transaction for rollback, and the
    savepoint's rollback was then refused: the run stayed running, on_complete ran twice."""
    Run.objects.filter(pk=run.pk).update(created_by=None)  # NOT NULL: an IntegrityError


@pytest.fixture(
    params=[raising_receiver, broken_receiver, orm_error_receiver],
    ids=["raises", "bad-sql", "orm-error"],
)
def bad_receiver(request: pytest.FixtureRequest) -> Iterator[None]:
    run_finished.connect(request.param, dispatch_uid="test.bad_receiver")
    hooks.SEEN.clear()
    yield
    run_finished.disconnect(dispatch_uid="test.bad_receiver")


def test_it_runs_on_complete_once_when_a_receiver_raises(bell: Bell, bad_receiver: None) -> None:
    run = start(samples.chain, {"n": 2}, on_complete="tests.workflows.hooks.record")
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == 2
    assert hooks.SEEN == [(str(run.pk), "succeeded")]


def test_it_runs_on_complete_once_for_a_burst_when_a_receiver_raises(
    bell: Bell, bad_receiver: None
) -> None:
    runs = [start(samples.waiter, {}, on_complete="tests.workflows.hooks.record") for _ in range(3)]
    bell.drain()
    for run in runs:
        send_event(run.pk, "approved", {})
    bell.lose_all()
    advance_many([(r.pk, r.generation) for r in runs])
    bell.settle()
    assert sorted(hooks.SEEN) == sorted((str(r.pk), "succeeded") for r in runs)
    assert all(get_run(r.pk).status == "succeeded" for r in runs)


CALLBACKS: list[str] = []


def writes_then_raises(sender: Any, run: Any, **kwargs: Any) -> None:
    Run.objects.filter(pk=run.pk).update(current_step="written by a broken receiver")
    transaction.on_commit(lambda: CALLBACKS.append("broken"))
    raise RuntimeError("after writing")


def test_a_failing_receivers_writes_and_callbacks_roll_back_alone(bell: Bell) -> None:
    CALLBACKS.clear()
    hooks.SEEN.clear()
    run_finished.connect(writes_then_raises, dispatch_uid="test.writes_then_raises")
    try:
        run = start(samples.chain, {"n": 1}, on_complete="tests.workflows.hooks.record")
        bell.settle()
    finally:
        run_finished.disconnect(dispatch_uid="test.writes_then_raises")
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.current_step != "written by a broken receiver"
    assert CALLBACKS == []
    assert hooks.SEEN == [(str(run.pk), "succeeded")]


# --- the end of a run with nothing else to write: one statement, no transaction ---------------


class EndStatements:
    """An execute wrapper noting, for each statement that ends a run (sets its status to a
    terminal one), whether it ran inside a transaction."""

    def __init__(self) -> None:
        self.in_transaction: list[bool] = []

    def __call__(self, execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
        if "UPDATE workflows_run SET" in sql and "succeeded" in [str(p) for p in params or []]:
            self.in_transaction.append(connection.in_atomic_block)
        return execute(sql, params, many, context)


def ends_of(bell: Bell, **options: Any) -> list[bool]:
    spy = EndStatements()
    with connection.execute_wrapper(spy):
        run = start(samples.chain, {"n": 2}, **options)
        bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == 2
    return spy.in_transaction


def wants_every_run(sender: Any, run: Any, **kwargs: Any) -> None:
    hooks.SEEN.append((str(run.pk), str(run.status)))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement on PostgreSQL")
def test_a_plain_success_ends_in_one_statement_outside_a_transaction(bell: Bell) -> None:
    assert ends_of(bell) == [False]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement on PostgreSQL")
def test_an_end_with_more_to_write_keeps_its_transaction(bell: Bell, settings: Any) -> None:
    settings.SLUICE_WEBHOOK_DISPATCH_ON_COMMIT = False  # the outbox row only: nothing is sent
    hooks.SEEN.clear()
    # on_complete runs in the transaction that ends the run.
    assert ends_of(bell, on_complete="tests.workflows.hooks.record") == [True]
    assert len(hooks.SEEN) == 1
    # A completion webhook's outbox row commits with the end.
    assert ends_of(bell, callback_url="https://hooks.example.com/done") == [True]
    assert Outbox.objects.count() == 1
    # A receiver that did not say which runs it wants is given every one, in the transaction.
    hooks.SEEN.clear()
    run_finished.connect(wants_every_run, dispatch_uid="test.wants_every_run")
    try:
        assert ends_of(bell) == [True]
    finally:
        run_finished.disconnect(dispatch_uid="test.wants_every_run")
    assert len(hooks.SEEN) == 1


def test_idle_for_asks_every_receiver() -> None:
    run = Run(callback_url="")
    assert run_finished.idle_for(run, "succeeded")  # the built-in receivers want nothing
    assert not run_finished.idle_for(run, "failed")  # reviews: a failed run may hold gates
    assert not run_finished.idle_for(Run(callback_url="https://x.example/"), "succeeded")
    run_finished.connect(
        wants_every_run, dispatch_uid="test.wants_failures", wants=lambda run, status: False
    )
    try:
        assert run_finished.idle_for(run, "succeeded")
    finally:
        run_finished.disconnect(dispatch_uid="test.wants_failures")
    run_finished.connect(wants_every_run, dispatch_uid="test.wants_every_run")
    try:
        assert not run_finished.idle_for(run, "succeeded")
    finally:
        run_finished.disconnect(dispatch_uid="test.wants_every_run")
