"""GET /api/pipelines: what a service may start, with input schemas and graphs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api, Persona
from workflows.core.definitions import get_workflow

pytestmark = pytest.mark.django_db


def test_it_lists_pipelines_with_their_input_schema(api: Api, service: Persona) -> None:
    r = api.get("/pipelines", as_=service)
    assert r.status_code == 200
    by_name = {p["name"]: p for p in r.json()}
    chain = by_name["test.chain"]
    assert chain["version"] == 1
    assert set(chain["input_schema"]["properties"]) == {"n", "start"}
    assert by_name["api.review"]["description"].startswith("Ask a person")


def test_it_includes_the_graph_and_sample_input_when_a_pipeline_has_them(
    api: Api,
    service: Persona,
    monkeypatch: Any,
) -> None:
    wf = get_workflow("test.chain")
    monkeypatch.setitem(wf.extra, "mermaid", "stateDiagram-v2\n  [*] --> add_one")
    monkeypatch.setitem(wf.extra, "sample_input", {"n": 2})
    by_name = {p["name"]: p for p in api.get("/pipelines", as_=service).json()}
    assert by_name["test.chain"]["graph"].startswith("stateDiagram-v2")
    assert by_name["test.chain"]["sample_input"] == {"n": 2}
    assert by_name["test.event"]["graph"] is None


def test_a_key_restricted_to_pipelines_sees_only_those(api: Api, make_key: Any) -> None:
    narrow = make_key("narrow", pipelines=["test.chain", "test.event"])
    names = [p["name"] for p in api.get("/pipelines", as_=narrow).json()]
    assert names == ["test.chain", "test.event"]
