"""Eight concurrent ``POST /api/runs`` with one Idempotency-Key: one run, one 201, seven 200s.

Each request runs in its own thread with its own database connection, released together by a
barrier, on PostgreSQL (SQLite serializes writers, so the race needs PostgreSQL). The race is
repeated, because a race that passes once proves little.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client

from tests.api.conftest import Api, Persona
from workflows.models import Run

pytestmark = pytest.mark.django_db(transaction=True)

CONTENDERS = 8
ROUNDS = 5


def concurrent_posts(persona: Persona, body: dict[str, Any], key: str) -> list[Any]:
    barrier = threading.Barrier(CONTENDERS)
    responses: list[Any] = [None] * CONTENDERS

    def post(i: int) -> None:
        client = Client()
        try:
            barrier.wait(timeout=10)
            responses[i] = client.post(
                "/api/runs",
                data=json.dumps(body),
                content_type="application/json",
                headers={**persona.headers, "Idempotency-Key": key},
            )
        except Exception as exc:
            responses[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(CONTENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return responses


def test_concurrent_starts_with_one_key_answer_201_exactly_once(
    service: Persona, bell: Any
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent inserts need PostgreSQL (SQLite serializes every writer)")
    service.key.rate_limit = 0
    service.key.save(update_fields=["rate_limit"])
    for round_ in range(ROUNDS):
        key = f"race-{round_}"
        responses = concurrent_posts(service, {"pipeline": "test.chain", "input": {"n": 1}}, key)
        statuses = sorted(getattr(r, "status_code", repr(r)) for r in responses)
        assert statuses == [200] * (CONTENDERS - 1) + [201], statuses
        assert len({r.json()["id"] for r in responses}) == 1
        assert Run.objects.filter(idempotency_key__endswith=f":{key}").count() == 1


def test_a_repeated_start_answers_200_with_the_same_run(api: Api, service: Persona) -> None:
    """The sequential form of the race (SQLite and PostgreSQL alike)."""
    body = {"pipeline": "test.chain", "input": {"n": 1}}
    first = api.post("/runs", body, as_=service, headers={"Idempotency-Key": "again"})
    assert first.status_code == 201
    for _ in range(3):
        r = api.post("/runs", body, as_=service, headers={"Idempotency-Key": "again"})
        assert r.status_code == 200 and r.json()["id"] == first.json()["id"]
    assert Run.objects.count() == 1
