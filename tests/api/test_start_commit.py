"""An API start as production runs it, outside any transaction: the run's INSERT commits by
itself (autocommit, no BEGIN/COMMIT round trips), before its doorbell rings and before the 201."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import connection, connections

from tests.api.conftest import Api, Persona
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

CHAIN = {"pipeline": "test.chain", "input": {"n": 2, "start": 1}}


def _committed(run_id: str) -> bool:
    """Whether another connection (another process, as a worker would be) sees the run."""
    other = connections.create_connection("default")
    pk = Run._meta.pk.get_db_prep_value(uuid.UUID(run_id), other)  # type: ignore[union-attr]
    try:
        with other.cursor() as cur:
            cur.execute(f"SELECT 1 FROM {Run._meta.db_table} WHERE id = %s", [pk])
            return cur.fetchone() is not None
    finally:
        other.close()


def test_the_run_is_committed_before_its_doorbell_rings_and_before_the_201(
    api: Api, service: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    rung: list[tuple[str, bool, bool]] = []

    def ring(run_id: Any, generation: int) -> None:
        rung.append((str(run_id), connection.in_atomic_block, _committed(str(run_id))))

    monkeypatch.setattr("workflows.core.doorbell.send_advance", ring)
    r = api.post("/runs", CHAIN, as_=service)
    assert r.status_code == 201
    assert rung == [(r.json()["id"], False, True)]
    assert _committed(r.json()["id"])


def test_a_failed_start_leaves_nothing_and_rings_nothing(
    api: Api, service: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    rung: list[Any] = []
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: rung.append(a))
    r = api.post("/runs", {"pipeline": "test.chain", "input": {"n": "many"}}, as_=service)
    assert r.status_code == 422
    assert rung == [] and not Run.objects.exists()


def test_the_same_idempotency_key_twice_is_one_run_rung_once(
    api: Api, service: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    rung: list[Any] = []
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: rung.append(a))
    headers = {"Idempotency-Key": "req-1"}
    first = api.post("/runs", CHAIN, as_=service, headers=headers)
    again = api.post("/runs", CHAIN, as_=service, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(rung) == 1 and Run.objects.count() == 1
