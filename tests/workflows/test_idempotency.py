"""Idempotency keys in Python: the same key and request return the run once created; the key
reused for another workflow or another input raises ``IdempotencyConflict``; concurrent starts
with one key create exactly one run (PostgreSQL: SQLite serializes writers)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from tests import sample_workflows as samples
from tests.support import Bell
from workflows import IdempotencyConflict, start
from workflows.core.services import start_or_find
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.core
def test_it_raises_a_conflict_for_a_used_key_with_another_input(bell: Bell) -> None:
    first = start(samples.chain, {"n": 1}, idempotency_key="req-7")
    assert start(samples.chain, {"n": 1}, idempotency_key="req-7").pk == first.pk
    with pytest.raises(IdempotencyConflict, match="another input") as info:
        start(samples.chain, {"n": 2}, idempotency_key="req-7")
    assert info.value.run_id == first.pk
    assert Run.objects.count() == 1


@pytest.mark.core
def test_it_raises_a_conflict_for_a_used_key_with_another_workflow(bell: Bell) -> None:
    first = start(samples.chain, {"n": 1}, idempotency_key="req-8")
    with pytest.raises(IdempotencyConflict, match="workflow 'test.chain', not 'test.sleep'"):
        start(samples.sleeper, {}, idempotency_key="req-8")
    assert list(Run.objects.values_list("pk", flat=True)) == [first.pk]


def race(key: str, contenders: int = 8) -> list[object]:
    """``start_or_find`` with ``key`` from ``contenders`` threads released together."""
    barrier = threading.Barrier(contenders)
    outcomes: list[object] = [None] * contenders

    def go(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            outcomes[i] = start_or_find(samples.chain, {"n": 1}, idempotency_key=key)
        except Exception as exc:  # collected and asserted by the caller
            outcomes[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def test_concurrent_starts_with_one_key_create_exactly_once(bell: Bell) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent inserts need PostgreSQL (SQLite serializes every writer)")
    for round_ in range(3):
        outcomes = race(f"race-{round_}")
        found = [o for o in outcomes if isinstance(o, tuple)]
        assert len(found) == len(outcomes), outcomes
        assert sum(created for _run, created in found) == 1
        assert len({run.pk for run, _created in found}) == 1
