"""The OpenAPI schema is a contract: changes to it are deliberate, and the docs page is served
without a CDN.

Regenerate the snapshot after an intended change with::

    SLUICE_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/api/test_openapi.py
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path

import pytest
from django.test import Client

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_matches_its_snapshot(client: Client) -> None:
    r = client.get("/api/openapi.json")
    assert r.status_code == 200
    text = json.dumps(r.json(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("SLUICE_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), "no snapshot yet: run with SLUICE_UPDATE_SNAPSHOTS=1"
    expected = SNAPSHOT.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True),
                text.splitlines(True),
                "openapi.snapshot.json",
                "/api/openapi.json",
                n=2,
            )
        )
        pytest.fail(
            "The OpenAPI schema changed. If that is intended, regenerate the snapshot "
            f"with SLUICE_UPDATE_SNAPSHOTS=1.\n{diff[:6000]}"
        )


def test_every_operation_documents_its_errors_in_one_shape(client: Client) -> None:
    schema = client.get("/api/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            statuses = set(op["responses"])
            assert {"401", "403", "429"} <= statuses, (method, path)
            for status in statuses - {"200", "201", "202"}:
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, status)
            assert op["security"] == [{"BearerKey": []}, {"HeaderKey": []}]


def test_the_docs_page_serves_swagger_without_a_cdn(client: Client) -> None:
    r = client.get("/api/docs")
    assert r.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.content.decode())
    assert assets and all(a.startswith("/static/") for a in assets)
