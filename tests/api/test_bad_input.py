"""Bad input found in issue 8 gets a clear 4xx in the API's error shape, never a 500:
numbers that overflow to Infinity, date-times with no UTC equivalent (in filters and cursors),
bodies that are not JSON, and a restart position past the journal."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import Client

import tests.workflows.blob_workflows  # noqa: F401  (registers blobs.echo_input)
from reviews.models import Gate
from tests.api.conftest import Api, Persona, error_code
from tests.support import Bell
from workflows import get_run, restart, start
from workflows.core.errors import InvalidInputError
from workflows.models import Event, Run

pytestmark = pytest.mark.django_db(transaction=True)

OVERFLOWING = ("1e400", "-1e400", "1E999", "123456789e999")


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _assert_refused(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.content
    assert error_code(r) == code


# --- Infinity and NaN ---------------------------------------------------------------------------


def test_an_event_payload_that_overflows_to_infinity_is_a_400(
    api: Api, service: Persona, bell: Bell
) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    for number in OVERFLOWING:
        raw = f'{{"name": "approved", "payload": {{"x": {number}}}}}'
        r = api.post(f"/runs/{run.pk}/events", raw=raw, as_=service)
        _assert_refused(r, 400, "malformed_json")
        assert "out of range" in r.json()["error"]["message"]
    for raw in ('{"name": "approved", "payload": [NaN]}', '{"name": "a", "payload": -Infinity}'):
        _assert_refused(
            api.post(f"/runs/{run.pk}/events", raw=raw, as_=service), 400, "malformed_json"
        )
    assert not Event.objects.exists()
    # The run is not wedged: a proper event still resumes it.
    r = api.post(f"/runs/{run.pk}/events", {"name": "approved", "payload": {"x": 0.5}}, as_=service)
    assert r.status_code == 202
    bell.drain()
    assert get_run(run.pk).output == {"first": 1, "event": {"x": 0.5}}


def test_run_input_that_overflows_is_a_400(api: Api, service: Persona) -> None:
    raw = '{"pipeline": "blobs.echo_input", "input": {"doc": {"x": [1e400]}}}'
    _assert_refused(api.post("/runs", raw=raw, as_=service), 400, "malformed_json")
    assert not Run.objects.exists()


def test_gate_edits_that_overflow_are_a_400(api: Api, service: Persona, bell: Bell) -> None:
    run = start("api.review", {"text": "Revenue rose 4%."}, tenant="acme")
    bell.drain()
    gate = Gate.objects.get(run=run)
    raw = '{"outcome": "approve", "edits": {"summary": 1e400}}'
    r = api.post(f"/gates/{gate.pk}/decision", raw=raw, as_=service)
    _assert_refused(r, 400, "malformed_json")
    gate.refresh_from_db()
    assert gate.status == "open"


def test_the_python_api_refuses_infinity_with_a_clear_error(bell: Bell) -> None:
    with pytest.raises(InvalidInputError, match="NaN or Infinity"):
        start("blobs.echo_input", {"doc": {"x": float("inf")}})
    run = start("test.event", {})
    from workflows import send_event

    with pytest.raises(InvalidInputError, match="NaN or Infinity"):
        send_event(run.pk, "approved", {"x": float("nan")})


# --- date-times and cursors ---------------------------------------------------------------------

EXTREMES = (
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:00:00+00:01",
)


def test_date_times_with_no_utc_equivalent_are_a_422(api: Api, service: Persona) -> None:
    for param in ("created_after", "created_before"):
        for value in EXTREMES:
            r = api.get(f"/runs?{param}={quote(value)}", as_=service)
            _assert_refused(r, 422, "invalid_request")
            (detail,) = r.json()["error"]["details"]
            assert detail["field"] == param and "out of range" in detail["message"]


def test_the_extreme_date_times_that_do_exist_are_fine(api: Api, service: Persona) -> None:
    start("test.chain", {"n": 1}, tenant="acme")
    for query, count in (
        ("created_after=0001-01-01T00:00:00Z", 1),
        ("created_before=9999-12-31T23:59:59Z", 1),
        ("created_after=9999-12-31T23:59:59%2B14:00", 0),
        ("created_before=0001-01-01T00:00:00-14:00", 0),
    ):
        r = api.get(f"/runs?{query}", as_=service)
        assert r.status_code == 200, (query, r.content)
        assert len(r.json()["items"]) == count, query


def test_a_cursor_with_an_extreme_or_garbage_position_is_a_422(api: Api, service: Persona) -> None:
    run_id = "00000000-0000-0000-0000-000000000000"
    cursors = [_cursor([value, run_id]) for value in EXTREMES]
    cursors += [
        _cursor(value)
        for value in (
            [5, run_id],
            ["2026-01-01T00:00:00Z", 5],
            ["2026-01-01T00:00:00Z", None],
            ["2026-01-01T00:00:00Z", "not-a-uuid"],
            ["2026-01-01T00:00:00", run_id],  # naive
            ["2026-01-01T00:00:00Z"],
            {"a": 1},
            "x",
            None,
            [[], {}],
        )
    ]
    cursors += ["", "%FF", "====", "\u00e9\u00e9", "W" * 499]
    for cursor in cursors:
        r = api.get(f"/runs?cursor={quote(cursor)}", as_=service)
        if cursor == "":
            assert r.status_code == 200  # an empty cursor is the first page
            continue
        _assert_refused(r, 422, "invalid_cursor")


# --- content types ------------------------------------------------------------------------------


def test_a_compressed_body_is_a_415_and_an_endless_nesting_a_400_saying_so(
    api: Api, service: Persona
) -> None:
    """Found by review: a gzip body (Content-Encoding: gzip) was "not valid JSON", and nesting
    deep enough to exhaust the parser (200,000 levels) also said "not valid JSON"."""
    import gzip

    body = gzip.compress(json.dumps({"pipeline": "test.chain", "input": {"n": 1}}).encode())
    r = api.client.post(
        "/api/runs",
        data=body,
        content_type="application/json",
        headers={**service.headers, "Content-Encoding": "gzip"},
    )
    _assert_refused(r, 415, "unsupported_media_type")
    assert "Content-Encoding gzip is not taken" in r.json()["error"]["message"]
    deep = '{"pipeline": "test.chain", "input": {"n": ' + "[" * 200_000 + "]" * 200_000 + "}}"
    r = api.post("/runs", raw=deep, as_=service)
    _assert_refused(r, 400, "malformed_json")
    assert "nested deeper than 64 levels" in r.json()["error"]["message"]
    assert not Run.objects.exists()


def test_a_body_that_is_not_json_is_a_415(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.event", {}, tenant="acme")
    bell.drain()
    gate_run = start("api.review", {}, tenant="acme")
    bell.drain()
    gate = Gate.objects.get(run=gate_run)
    bodies = {
        "/runs": {"pipeline": "test.chain", "input": {"n": 1}},
        f"/runs/{run.pk}/events": {"name": "approved"},
        f"/gates/{gate.pk}/decision": {"outcome": "approve"},
        f"/runs/{run.pk}/restart": {"from_step": 1},
    }
    for path, body in bodies.items():
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/json", ""):
            r = api.client.post(
                f"/api{path}",
                data=json.dumps(body),
                content_type=content_type,
                headers=service.headers,
            )
            _assert_refused(r, 415, "unsupported_media_type")
            assert "application/json" in r.json()["error"]["message"]
    assert Run.objects.count() == 2 and not Event.objects.exists()
    gate.refresh_from_db()
    assert gate.status == "open"
    # JSON with a charset, or a structured +json type, is JSON.
    r = api.client.post(
        f"/api/runs/{run.pk}/events",
        data=json.dumps({"name": "approved"}),
        content_type="application/json; charset=utf-8",
        headers=service.headers,
    )
    assert r.status_code == 202


# --- restart past the journal -------------------------------------------------------------------


def test_restarting_past_the_journal_is_a_422(api: Api, service: Persona, bell: Bell) -> None:
    run = start("test.chain", {"n": 3}, tenant="acme")
    bell.drain()
    for position in (4, 1_000_000):
        r = api.post(f"/runs/{run.pk}/restart", {"from_step": position}, as_=service)
        _assert_refused(r, 422, "invalid_input")
        assert f"from_step {position} is past the journal" in r.json()["error"]["message"]
        assert r.json()["error"]["details"][0]["field"] == "from_step"
    assert get_run(run.pk).generation == 1  # nothing was superseded
    with pytest.raises(InvalidInputError, match="past the journal"):
        restart(run.pk, from_step=10**30)
    r = api.post(f"/runs/{run.pk}/restart", {"from_step": 3}, as_=service)
    assert r.status_code == 200 and r.json()["generation"] == 2


# --- found in the tenth session's review ---------------------------------------------------------


def test_too_many_query_fields_is_a_400_not_a_500(api: Api, service: Persona) -> None:
    """Django refuses more than DATA_UPLOAD_MAX_NUMBER_FIELDS query fields (a
    SuspiciousOperation): the API answers it as the HTML pages do, a 400."""
    many = "&".join(f"a{i}=1" for i in range(1500))
    for path in (f"/runs?{many}", f"/gates?{many}"):
        r = api.get(path, as_=service)
        _assert_refused(r, 400, "bad_request")
        assert "parameters exceeded" in r.json()["error"]["message"]
    assert api.get("/runs?limit=1", as_=service).status_code == 200


def test_a_reused_idempotency_key_does_not_name_a_run_the_key_may_not_see(
    api: Api, make_key: Any
) -> None:
    """Idempotency keys are the tenant's, so a key limited to other pipelines can hit one that a
    sibling key used: it gets the 422, but not the hidden run's id (that run is a 404 to it)."""
    chains = make_key("chains", tenant="acme", pipelines=["test.chain"])
    sleeps = make_key("sleeps", tenant="acme", pipelines=["test.sleep"])
    both = make_key("both", tenant="acme", pipelines=["test.chain", "test.sleep"])
    idem = {"Idempotency-Key": "order-42"}
    first = api.post(
        "/runs", {"pipeline": "test.chain", "input": {"n": 1}}, as_=chains, headers=idem
    )
    assert first.status_code == 201
    hidden = first.json()["id"]
    assert api.get(f"/runs/{hidden}", as_=sleeps).status_code == 404
    r = api.post(
        "/runs", {"pipeline": "test.sleep", "input": {"seconds": 1}}, as_=sleeps, headers=idem
    )
    _assert_refused(r, 422, "idempotency_key_reused")
    assert r.json()["error"]["details"] is None
    assert hidden not in r.content.decode()
    # A key that may see the run is told which run holds the key.
    r = api.post(
        "/runs", {"pipeline": "test.sleep", "input": {"seconds": 1}}, as_=both, headers=idem
    )
    _assert_refused(r, 422, "idempotency_key_reused")
    assert r.json()["error"]["details"] == {"run_id": hidden}
    assert Run.objects.count() == 1


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("api:order-7", "api:order-7"),
        ("api:v2:order-7", "api:v2:order-7"),
        ("api:99:x:y", "api:99:x:y"),
        ("api:1:x:order-7", "order-7"),
        ("plain", "plain"),
    ],
)
def test_a_run_whose_key_only_looks_like_the_apis_reads_as_it_is(
    api: Api, make_key: Any, stored: str, shown: str
) -> None:
    """A run started from Python may carry any key, ``api:…`` included: reading it is a 200
    with the key as stored, not a 500 from unpacking the API's own prefix."""
    run = start("test.chain", {"n": 1}, idempotency_key=stored)
    reader = make_key("default-tenant")
    r = api.get(f"/runs/{run.pk}", as_=reader)
    assert r.status_code == 200, r.content
    assert r.json()["idempotency_key"] == shown


# --- unknown paths, every method ----------------------------------------------------------------

UNKNOWN_PATHS = ("/api/runs/", "/api/nonexistent", "/api/", "/api/runs/x/y/z")


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
def test_every_method_on_an_unknown_path_is_the_json_404(path: str, service: Persona) -> None:
    """An unknown path answers the documented 404 (docs/api.md) whatever the method, with a key
    or without, from a browser session too: Django's CSRF check does not apply there (a POST got
    its HTML "form expired" 403 page), and ``/api/`` itself is no HTML page."""
    session = Client(enforce_csrf_checks=True)
    session.force_login(User.objects.create_user("ana"))
    for client in (
        Client(enforce_csrf_checks=True),
        Client(enforce_csrf_checks=True, headers=service.headers),
        session,
    ):
        for method in ("get", "post", "put", "patch", "delete", "options"):
            body = {} if method == "get" else {"data": b"{}", "content_type": "application/json"}
            r = getattr(client, method)(path, **body)
            assert r.status_code == 404, (method, path, r.status_code)
            assert r["Content-Type"] == "application/json", (method, path)
            assert error_code(r) == "not_found"
            assert r.json()["error"]["message"] == f"no API endpoint at {path}"
        r = client.head(path)
        assert r.status_code == 404 and r.content == b""


def test_the_schema_and_its_docs_refuse_other_methods_as_json() -> None:
    client = Client(enforce_csrf_checks=True)
    for path in ("/api/openapi.json", "/api/docs"):
        assert client.get(path).status_code == 200
        for method in ("post", "put", "patch", "delete"):
            r = getattr(client, method)(path, data=b"{}", content_type="application/json")
            assert r.status_code == 405, (method, path, r.status_code)
            assert error_code(r) == "method_not_allowed"
            assert r["Allow"] == "GET"
