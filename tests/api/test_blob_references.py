"""The forged blob reference attack of issue 8, over the API: a key of tenant ``other`` sends its
own run an event (or an input) shaped like ``{"$blob": <id>}``, naming another tenant's stored
document. The run must see the literal dict, never the document."""

from __future__ import annotations

from typing import Any

import pytest

import tests.workflows.blob_workflows  # noqa: F401  (registers the workflows)
from tests.api.conftest import Api, Persona
from tests.support import Bell
from workflows.models import Blob

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _small_inline_limit(settings: Any) -> None:
    settings.SLUICE_PAYLOAD_INLINE_LIMIT = 100
    settings.SLUICE_PAYLOAD_HARD_LIMIT = 100_000


@pytest.fixture
def other(make_key: Any) -> Persona:
    return make_key("other-service", tenant="other")


def acme_document(api: Api, service: Persona, bell: Bell) -> int:
    """Tenant acme's large output, stored out of row: the id of its blob."""
    r = api.post("/runs", {"pipeline": "blobs.document", "input": {"n": 50}}, as_=service)
    assert r.status_code == 201
    bell.drain()
    detail = api.get(f"/runs/{r.json()['id']}", as_=service).json()
    assert detail["status"] == "succeeded" and detail["output"] is None
    blob_id = int(detail["output_url"].rsplit("/", 1)[1])
    assert Blob.objects.get(pk=blob_id).run_id is not None
    return blob_id


def test_it_never_reads_an_event_payload_as_another_tenants_blob(
    api: Api, service: Persona, other: Persona, bell: Bell
) -> None:
    blob_id = acme_document(api, service, bell)
    # The same key is refused the document when it asks for it directly ...
    r = api.post("/runs", {"pipeline": "blobs.echo_event"}, as_=other)
    run_id = r.json()["id"]
    assert api.get(f"/runs/{run_id}/values/{blob_id}", as_=other).status_code == 404
    bell.drain()
    # ... and gets nothing more by forging a reference in an event.
    r = api.post(f"/runs/{run_id}/events", {"name": "go", "payload": {"$blob": blob_id}}, as_=other)
    assert r.status_code == 202
    bell.drain()
    detail = api.get(f"/runs/{run_id}", as_=other).json()
    assert detail["status"] == "succeeded"
    assert detail["output"] == {"$blob": blob_id}
    assert detail["output_url"] is None
    steps = api.get(f"/runs/{run_id}/steps", as_=other).json()
    assert [s["result"] for s in steps if s["kind"] == "event"] == [{"$blob": blob_id}]
    assert "secret" not in str(detail) + str(steps)


def test_it_never_reads_run_input_as_another_tenants_blob(
    api: Api, service: Persona, other: Persona, bell: Bell
) -> None:
    blob_id = acme_document(api, service, bell)
    forged = {"$blob": blob_id, "size": 10}
    r = api.post("/runs", {"pipeline": "blobs.echo_input", "input": {"doc": forged}}, as_=other)
    assert r.status_code == 201
    bell.drain()
    detail = api.get(f"/runs/{r.json()['id']}", as_=other).json()
    assert detail["status"] == "succeeded", detail["error"]
    assert detail["output"] == forged and detail["output_url"] is None
    assert "secret" not in str(detail)


def test_a_large_child_output_is_linked_where_it_is_stored(
    api: Api, service: Persona, bell: Bell
) -> None:
    r = api.post("/runs", {"pipeline": "blobs.parent", "input": {"n": 50}}, as_=service)
    bell.settle()
    run_id = r.json()["id"]
    assert api.get(f"/runs/{run_id}", as_=service).json()["output"] == {"length": 350}
    steps = api.get(f"/runs/{run_id}/steps", as_=service).json()
    (child,) = [s for s in steps if s["kind"] == "child"]
    assert child["result_url"].startswith(f"/api/runs/{run_id}/values/")
    value = api.get(child["result_url"].removeprefix("/api"), as_=service)
    assert value.status_code == 200 and value.json()["text"].startswith("secret")


def test_a_key_limited_to_the_parent_pipeline_reads_the_childs_handed_output(
    api: Api, bell: Bell
) -> None:
    """The link goes through the parent (review finding: it named the child, which such a
    key may not see: a 404)."""
    from workflows.keys import create_api_key

    key, secret = create_api_key(
        "parent only", scopes=["runs:read", "runs:write"], tenant="acme", pipelines=["blobs.parent"]
    )
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    from django.test import Client

    c = Client()
    r = c.post(
        "/api/runs",
        {"pipeline": "blobs.parent", "input": {"n": 50}},
        content_type="application/json",
        **auth,
    )
    assert r.status_code == 201, r.content
    bell.settle()
    run_id = r.json()["id"]
    steps = c.get(f"/api/runs/{run_id}/steps", **auth).json()
    (child,) = [s for s in steps if s["kind"] == "child"]
    value = c.get(child["result_url"], **auth)
    assert value.status_code == 200 and value.json()["text"].startswith("secret")
