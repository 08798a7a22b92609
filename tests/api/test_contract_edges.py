"""Edges of the API's HTTP contract, found by review (a client developer's lens):

- a chunked body (``Transfer-Encoding``, no ``Content-Length``) was read as no body: Django
  reads ``Content-Length`` bytes only. A restart ran from step 1 without its reason, a cancel
  lost its reason, a start was a misleading 422. It is a 411 ``length_required`` now;
- the journal's ``Link`` was relative, which ``requests`` and ``httpx`` cannot follow as given;
- the 503 ``database_unavailable`` of every operation was in no operation of the schema;
- ``Authorization: Bearer  <key>`` (two spaces, RFC 9110 allows them) was a 401;
- ``/api`` without its slash was an HTML 301 (a 500 for a POST under DEBUG);
- ``GET /api/gates?offset=`` was silently ignored;
- an integer of over 4,300 digits was "not valid JSON".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from reviews.models import Gate
from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import get_run, start
from workflows.models import Run, RunAudit, Step

pytestmark = pytest.mark.django_db(transaction=True)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


# --- chunked bodies ---------------------------------------------------------------------------


def _chunked(api: Api, path: str, body: Any, as_: Persona, **meta: str) -> Any:
    """A POST whose body the server cannot frame: ``Transfer-Encoding: chunked`` and no
    ``Content-Length`` (gunicorn and runserver give Django no CONTENT_LENGTH then, and Django
    reads no body)."""
    return api.client.generic(
        "POST",
        f"/api{path}",
        data=json.dumps(body).encode(),
        content_type="application/json",
        headers=as_.headers,
        HTTP_TRANSFER_ENCODING="chunked",
        CONTENT_LENGTH="",
        **meta,
    )


def _length_required(r: Any) -> None:
    assert r.status_code == 411, (r.status_code, r.content[:300])
    assert error_code(r) == "length_required"
    assert "Content-Length" in r.json()["error"]["message"]


def test_a_chunked_restart_is_refused_before_anything_restarts(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.chain", {"n": 4}, tenant="acme")
    bell.drain()
    assert get_run(run.pk).status == "succeeded"
    r = _chunked(api, f"/runs/{run.pk}/restart", {"from_step": 3, "reason": "why"}, service)
    _length_required(r)
    assert not RunAudit.objects.filter(run=run).exists()
    assert Run.objects.get(pk=run.pk).generation == run.generation
    assert not Step.objects.filter(run=run, superseded=True).exists()


def test_a_chunked_cancel_start_or_event_is_a_411(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    _length_required(_chunked(api, f"/runs/{run.pk}/cancel", {"reason": "dup"}, service))
    assert get_run(run.pk).status == "suspended"
    _length_required(_chunked(api, f"/runs/{run.pk}/events", {"name": "approved"}, service))
    _length_required(_chunked(api, "/runs", {"pipeline": "test.chain", "input": {"n": 1}}, service))
    assert Run.objects.count() == 1
    # Without a Content-Length key at all (the test client's empty body), the same.
    r = api.client.generic(
        "POST",
        f"/api/runs/{run.pk}/cancel",
        headers={**service.headers, "Transfer-Encoding": "chunked"},
    )
    _length_required(r)
    # A framed body is read as ever.
    r = api.post(f"/runs/{run.pk}/cancel", {"reason": "duplicate ticket"}, as_=service)
    assert r.status_code == 200 and r.json()["audit"][-1]["reason"] == "duplicate ticket"


def test_under_asgi_a_chunked_body_is_read(service: Persona) -> None:
    """Found by the diff review: Django's ASGI handler reads a chunked body whole
    (``config/asgi.py`` serves under uvicorn or daphne): no 411 there. The body comes in two
    parts and no Content-Length, as an ASGI server passes a chunked request on."""
    import asyncio
    import threading

    from django.core.asgi import get_asgi_application
    from django.core.signals import request_finished
    from django.db import connections

    app = get_asgi_application()
    body = json.dumps({"pipeline": "test.chain", "input": {"n": 1}}).encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in service.headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/runs",
        "raw_path": b"/api/runs",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
            *headers,
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    parts = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:], "more_body": False},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    def close_connections(**kwargs: Any) -> None:
        connections.close_all()  # in the request's own thread, as its end is signalled there

    # In a thread of its own: another test may have left an event loop in this one.
    request_finished.connect(close_connections)
    try:
        served = threading.Thread(target=lambda: asyncio.run(app(scope, receive, send)))
        served.start()
        served.join(60)
    finally:
        request_finished.disconnect(close_connections)
    assert not served.is_alive()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status == 201, sent
    assert Run.objects.count() == 1


# --- the journal's Link -----------------------------------------------------------------------


def test_the_journal_link_is_an_absolute_url(api: Api, service: Persona) -> None:
    run = Run.objects.create(workflow="test.chain", tenant="acme", status="succeeded")
    Step.objects.bulk_create(
        Step(run=run, position=i, name=f"s{i}", status="succeeded") for i in range(1, 6)
    )
    r = api.get(f"/runs/{run.pk}/steps?limit=2", as_=service)
    match = re.fullmatch(r'<([^>]+)>; rel="next"', r.headers["Link"])
    assert match
    assert match.group(1).startswith(f"http://testserver/api/runs/{run.pk}/steps?cursor=")
    r = api.client.get(match.group(1), headers=service.headers)  # followed as given
    assert [s["position"] for s in r.json()] == [3, 4]
    r = api.client.get(f"/api/runs/{run.pk}/steps?limit=2", headers=service.headers, secure=True)
    assert r.headers["Link"].startswith(f"<https://testserver/api/runs/{run.pk}/steps?")


# --- the schema and the docs ------------------------------------------------------------------


def test_every_operation_documents_the_503_and_its_retry_after(api: Api) -> None:
    schema = api.client.get("/api/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            for status in ("429", "503"):
                answer = op["responses"].get(status)
                assert answer is not None, (method, path, status)
                assert "Retry-After" in answer.get("headers", {}), (method, path, status)


@pytest.mark.parametrize(
    "code", ["internal_error", "invalid_review_timeout", "length_required", "database_unavailable"]
)
def test_the_error_table_lists_every_code(code: str) -> None:
    errors = DOC.split("## Errors", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in errors.splitlines() if line.startswith("| "))
    assert f"`{code}`" in table, code


# --- authentication ---------------------------------------------------------------------------


def test_a_bearer_token_after_several_spaces_is_read(api: Api, service: Persona) -> None:
    r = api.client.get("/api/runs", headers={"Authorization": f"Bearer  {service.raw}"})
    assert r.status_code == 200
    r = api.client.get("/api/runs", headers={"Authorization": "Bearer  "})
    assert r.status_code == 401 and error_code(r) == "unauthorized"


# --- /api without its slash -------------------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("method", ["get", "post", "put", "delete", "head"])
def test_api_without_its_slash_is_the_json_404(api: Api, method: str, debug: bool) -> None:
    with override_settings(DEBUG=debug):
        r = getattr(api.client, method)("/api")
    assert r.status_code == 404
    if method != "head":
        assert error_code(r) == "not_found"


# --- GET /api/gates ---------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["offset", "page", "skip"])
def test_gates_refuse_other_paging_as_runs_do(
    api: Api, service: Persona, bell: Bell, param: str
) -> None:
    run = start("api.review", {"text": "Revenue rose 4%."}, tenant="acme")
    bell.drain()
    assert Gate.objects.filter(run=run, status="open").exists()
    r = api.get(f"/gates?{param}=1", as_=service)
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert r.json()["error"]["details"][0]["field"] == param
    assert len(api.get("/gates", as_=service).json()) == 1


def test_the_docs_give_the_gate_lists_default_and_cap() -> None:
    gates = DOC.split("- `GET /api/gates` ", 1)[1].split("\n- ", 1)[0]
    assert "100" in gates and "500" in gates and "offset" in gates


# --- an integer too long ----------------------------------------------------------------------


def test_an_integer_too_long_says_so(api: Api, service: Persona) -> None:
    raw = b'{"pipeline": "test.chain", "input": {"n": ' + b"9" * 5000 + b"}}"
    r = api.post("/runs", raw=raw, as_=service)
    assert r.status_code == 400 and error_code(r) == "malformed_json"
    assert "integer too long" in r.json()["error"]["message"]
    assert "4,300 digits" in r.json()["error"]["message"]
    r = api.post("/runs", raw=b'{"pipeline": ', as_=service)
    assert r.json()["error"]["message"] == "the request body is not valid JSON"
