"""POST /api/runs: start a run, idempotently, with its input validated."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Api, Persona, error_code
from workflows.models import Run

pytestmark = pytest.mark.django_db

CHAIN = {"pipeline": "test.chain", "input": {"n": 2, "start": 1}}


def test_it_starts_a_run_for_the_keys_tenant(api: Api, service: Persona) -> None:
    r = api.post("/runs", CHAIN, as_=service)
    assert r.status_code == 201
    body = r.json()
    run = Run.objects.get(pk=body["id"])
    assert (run.workflow, run.input, run.status) == ("test.chain", {"n": 2, "start": 1}, "pending")
    assert run.tenant == "acme" and run.created_by == f"api:{service.key.prefix}"
    assert body["status"] == "pending" and body["pipeline"] == "test.chain"
    assert body["links"]["steps"] == f"/api/runs/{run.pk}/steps"


def test_the_same_idempotency_key_and_body_return_the_same_run(api: Api, service: Persona) -> None:
    first = api.post("/runs", CHAIN, as_=service, headers={"Idempotency-Key": "req-42"})
    again = api.post("/runs", CHAIN, as_=service, headers={"Idempotency-Key": "req-42"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["idempotency_key"] == "req-42"
    assert Run.objects.count() == 1


def test_the_same_idempotency_key_with_another_body_is_a_422(api: Api, service: Persona) -> None:
    api.post("/runs", CHAIN, as_=service, headers={"Idempotency-Key": "req-42"})
    other = {**CHAIN, "input": {"n": 3}}
    r = api.post("/runs", other, as_=service, headers={"Idempotency-Key": "req-42"})
    assert r.status_code == 422
    assert error_code(r) == "idempotency_key_reused"
    assert Run.objects.count() == 1


@pytest.mark.parametrize("number", [1e23, 12345678901234567.0, 0.1, 10**20])
def test_a_retry_with_a_large_number_in_its_input_is_the_same_request(
    api: Api, service: Persona, number: float
) -> None:
    """PostgreSQL's jsonb hands 1e23 back as the integer 10**23: still the same input (review
    finding: the retry was a 422 idempotency_key_reused on PostgreSQL)."""
    body = {"pipeline": "test.sleep", "input": {"seconds": number}}
    first = api.post("/runs", body, as_=service, headers={"Idempotency-Key": "big"})
    again = api.post("/runs", body, as_=service, headers={"Idempotency-Key": "big"})
    assert (first.status_code, again.status_code) == (201, 200), again.content
    changed = {"pipeline": "test.sleep", "input": {"seconds": number * 2}}
    r = api.post("/runs", changed, as_=service, headers={"Idempotency-Key": "big"})
    assert r.status_code == 422


def test_idempotency_keys_are_per_tenant(api: Api, service: Persona, outsider: Persona) -> None:
    a = api.post("/runs", CHAIN, as_=service, headers={"Idempotency-Key": "req-1"})
    b = api.post("/runs", CHAIN, as_=outsider, headers={"Idempotency-Key": "req-1"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["id"] != b.json()["id"]


def test_without_an_idempotency_key_each_request_starts_a_run(api: Api, service: Persona) -> None:
    api.post("/runs", CHAIN, as_=service)
    api.post("/runs", CHAIN, as_=service)
    assert Run.objects.count() == 2


def test_it_lists_every_invalid_input_field(api: Api, service: Persona) -> None:
    r = api.post(
        "/runs", {"pipeline": "test.chain", "input": {"n": "many", "bogus": 1}}, as_=service
    )
    assert r.status_code == 422
    assert error_code(r) == "invalid_input"
    fields = {e["field"] for e in r.json()["error"]["details"]}
    assert fields == {"n", "bogus"}
    assert "n:" in r.json()["error"]["message"]


def test_a_missing_required_input_is_named(api: Api, service: Persona) -> None:
    r = api.post("/runs", {"pipeline": "test.flaky", "input": {}}, as_=service)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "key"


def test_an_unknown_pipeline_is_a_422(api: Api, service: Persona) -> None:
    r = api.post("/runs", {"pipeline": "no.such", "input": {}}, as_=service)
    assert r.status_code == 422
    assert error_code(r) == "unknown_pipeline"


def test_a_request_body_of_the_wrong_shape_is_a_422(api: Api, service: Persona) -> None:
    for body in (
        {"input": {}},
        {"pipeline": "test.chain", "input": [1]},
        {"pipeline": "test.chain", "surprise": True},
        [1, 2],
        "text",
        None,
    ):
        r = api.post("/runs", raw=json.dumps(body), as_=service)
        assert r.status_code == 422, body
        assert error_code(r) == "invalid_request"


def test_malformed_json_is_a_400(api: Api, service: Persona) -> None:
    for raw in (
        '{"pipeline": ',
        '{"pipeline": NaN}',
        b"\xff\xfe",
        '{"a": "\\u0000"}',
        '{"a": "\\ud800"}',
        "[" * 100 + "]" * 100,
    ):
        r = api.post("/runs", raw=raw, as_=service)
        assert r.status_code == 400, raw
        assert error_code(r) == "malformed_json"


def test_an_oversized_body_is_a_413(api: Api, service: Persona, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"pipeline": "test.chain", "input": {"n": 1, "pad": "x" * 2000}}
    r = api.post("/runs", body, as_=service)
    assert r.status_code == 413
    assert error_code(r) == "payload_too_large"


def test_an_input_over_the_payload_hard_limit_is_a_413(
    api: Api, service: Persona, settings: Any
) -> None:
    settings.SLUICE_PAYLOAD_HARD_LIMIT = 100
    r = api.post("/runs", {"pipeline": "test.flaky", "input": {"key": "k" * 200}}, as_=service)
    assert r.status_code == 413
    assert error_code(r) == "payload_too_large"


def test_it_refuses_private_callback_urls_unless_allowed(
    api: Api, service: Persona, settings: Any
) -> None:
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
    for url in (
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://169.254.169.254/latest",
        "ftp://example.com/x",
        "http://user:pw@example.com/",
    ):
        r = api.post("/runs", {**CHAIN, "callback_url": url}, as_=service)
        assert r.status_code == 422, url
        assert error_code(r) == "invalid_callback_url"
    public = "https://hooks.example.com/sluice"
    r = api.post("/runs", {**CHAIN, "callback_url": public}, as_=service)
    assert r.status_code == 201
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = True
    r = api.post("/runs", {**CHAIN, "callback_url": "http://127.0.0.1:9/hook"}, as_=service)
    assert r.status_code == 201
    assert Run.objects.get(pk=r.json()["id"]).callback_url == "http://127.0.0.1:9/hook"


def test_it_records_a_budget(api: Api, service: Persona) -> None:
    r = api.post("/runs", {**CHAIN, "max_cost": 1.5}, as_=service)
    assert r.status_code == 201 and r.json()["max_cost"] == 1.5
    r = api.post("/runs", {**CHAIN, "max_cost": -1}, as_=service)
    assert r.status_code == 422


def test_a_start_costs_one_query_and_answers_as_a_read_would(api: Api, service: Persona) -> None:
    """The API's hottest path (W7): once this process knows the key, a start is the run's
    INSERT alone (the rate window is counted in Redis, or on the key's row without a Redis
    broker: one more query). The fresh run's gates, audit and costs are known to be empty and
    are not queried, yet the answer is the one a read of the run gives."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from workflows.core import broker

    assert api.get("/runs", as_=service).status_code == 200  # the key, found and remembered
    body = {**CHAIN, "max_cost": 1.5}
    with CaptureQueriesContext(connection) as ctx:
        r = api.post("/runs", body, as_=service)
    assert r.status_code == 201
    # Savepoints are the test's own transaction around the start's atomic block.
    sqls = [q["sql"] for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"]]
    expected = ["INSERT"] if broker.client() else ["UPDATE", "INSERT"]
    assert [s.split()[0] for s in sqls] == expected, [s[:80] for s in sqls]
    read = api.get(f"/runs/{r.json()['id']}", as_=service).json()
    for field in ("open_gates", "audit", "generations", "max_cost", "status", "input"):
        assert r.json()[field] == read[field], field
    assert r.json()["generations"] == [
        {"generation": 1, "cost": 0.0, "run_total": 0.0, "max_cost": 1.5}
    ]
