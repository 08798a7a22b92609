"""The permission matrix: every endpoint × (no key, wrong scope, other pipeline, other tenant,
valid key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from reviews.models import Gate
from tests.api.conftest import Api, error_code
from tests.support import Bell
from workflows import start

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: Any
    scope: str  # a scope that is enough ("" = any valid key)
    ok: int


ENDPOINTS = [
    Endpoint("get", "/runs", None, "runs:read", 200),
    Endpoint("post", "/runs", {"pipeline": "api.review", "input": {}}, "runs:write", 201),
    Endpoint("get", "/runs/{run}", None, "runs:read", 200),
    Endpoint("get", "/runs/{run}/steps", None, "runs:read", 200),
    Endpoint("post", "/runs/{run}/events", {"name": "ping"}, "runs:write", 202),
    Endpoint("post", "/runs/{run}/cancel", None, "runs:write", 200),
    Endpoint("post", "/runs/{done}/restart", {"from_step": 1}, "runs:write", 200),
    Endpoint("get", "/gates", None, "gates:decide", 200),
    Endpoint("post", "/gates/{gate}/decision", {"outcome": "approve"}, "gates:decide", 200),
    Endpoint("get", "/pipelines", None, "", 200),
]
WRONG_SCOPE = {"runs:read": "gates:decide", "runs:write": "runs:read", "gates:decide": "runs:write"}


@pytest.fixture
def world(bell: Bell) -> dict[str, Any]:
    run = start("api.review", {}, tenant="acme")
    done = start("test.chain", {"n": 1}, tenant="acme")
    bell.drain()
    gate = Gate.objects.get(run=run)
    return {"run": run.pk, "done": done.pk, "gate": gate.pk}


def _call(api: Api, ep: Endpoint, world: dict[str, Any], persona: Any) -> Any:
    return api.request(ep.method, ep.path.format(**world), ep.body, as_=persona)


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_without_a_key_it_is_401(api: Api, ep: Endpoint, world: dict[str, Any]) -> None:
    r = _call(api, ep, world, None)
    assert r.status_code == 401 and error_code(r) == "unauthorized"


@pytest.mark.parametrize(
    "ep", [e for e in ENDPOINTS if e.scope], ids=lambda e: f"{e.method} {e.path}"
)
def test_with_the_wrong_scope_it_is_403(
    api: Api, ep: Endpoint, world: dict[str, Any], make_key: Any
) -> None:
    persona = make_key("wrong", scopes=(WRONG_SCOPE[ep.scope],), tenant="acme")
    r = _call(api, ep, world, persona)
    assert r.status_code == 403 and error_code(r) == "forbidden"


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_for_another_pipeline_it_is_403_or_404(
    api: Api, ep: Endpoint, world: dict[str, Any], make_key: Any
) -> None:
    persona = make_key("narrow", tenant="acme", pipelines=["test.sleep"])
    r = _call(api, ep, world, persona)
    if "{" in ep.path:
        assert r.status_code == 404 and error_code(r) == "not_found"
    elif ep.method == "post":
        assert r.status_code == 403 and error_code(r) == "forbidden"
    else:  # a listing: nothing of the other pipelines in it
        assert r.status_code == 200
        items = r.json()["items"] if ep.path == "/runs" else r.json()
        assert all(i.get("pipeline", i.get("name")) == "test.sleep" for i in items)


@pytest.mark.parametrize(
    "ep", [e for e in ENDPOINTS if "{" in e.path], ids=lambda e: f"{e.method} {e.path}"
)
def test_for_another_tenant_it_is_404(
    api: Api, ep: Endpoint, world: dict[str, Any], outsider: Any
) -> None:
    r = _call(api, ep, world, outsider)
    assert r.status_code == 404 and error_code(r) == "not_found"


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_with_a_valid_key_it_succeeds(
    api: Api, ep: Endpoint, world: dict[str, Any], make_key: Any
) -> None:
    scopes = (ep.scope,) if ep.scope else ("runs:read",)
    persona = make_key(
        "just-enough", scopes=scopes, tenant="acme", pipelines=["api.review", "test.chain"]
    )
    r = _call(api, ep, world, persona)
    assert r.status_code == ep.ok, r.content


def test_a_key_that_may_only_write_gets_no_run_contents_back(
    api: Api, world: dict[str, Any], make_key: Any, bell: Bell
) -> None:
    """Found by review: a ``runs:write`` key could read what ``GET /runs/{id}`` refuses it (the
    output, errors, audit) from the answer of an Idempotency-Key retry, a cancel or a restart."""
    writer = make_key("writer", scopes=("runs:write",), tenant="acme")
    body = {"pipeline": "test.chain", "input": {"n": 1}}
    key = {"Idempotency-Key": "w-1"}
    first = api.post("/runs", body, as_=writer, headers=key)
    assert first.status_code == 201 and first.json()["input"] == {"n": 1}  # what it just sent
    bell.settle()
    assert api.get(f"/runs/{first.json()['id']}", as_=writer).status_code == 403
    again = api.post("/runs", body, as_=writer, headers=key).json()
    assert again["status"] == "succeeded" and again["id"] == first.json()["id"]
    assert (again["output"], again["input"], again["error"], again["audit"]) == (None, {}, None, [])
    restarted = api.post(f"/runs/{world['done']}/restart", {"reason": "r"}, as_=writer).json()
    assert restarted["status"] == "pending" and restarted["audit"] == []
    # another key's run: not its cost, callback URL, starter or current step either
    other = start("test.chain", {"n": 1}, tenant="acme", callback_url="https://h.example/x?t=s3")
    canceled = api.post(f"/runs/{other.pk}/cancel", as_=writer).json()
    assert canceled["status"] in ("canceled", "compensating")
    assert (canceled["callback_url"], canceled["created_by"], canceled["cost"]) == (None, "", 0.0)
    assert canceled["current_step"] == "" and canceled["idempotency_key"] is None
    reader = make_key("reader", scopes=("runs:read", "runs:write"), tenant="acme")
    full = api.post("/runs", body, as_=reader, headers=key).json()
    assert full["output"] is not None and full["input"] == {"n": 1}
