"""docs/api.md stays true: its signature example verifies real deliveries, and it covers every
endpoint of the schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api, Persona
from tests.api.receiver import receiver
from tests.support import Bell
from workflows.core.outbox import deliver_due

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def _example() -> dict[str, Any]:
    code = re.search(r"```python\n(.*?)```", DOC.split("**Verifying the signature.**")[1], re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "docs/api.md", "exec"), namespace)
    return namespace


@pytest.mark.django_db(transaction=True)
def test_the_signature_example_verifies_a_real_delivery(
    api: Api, service: Persona, bell: Bell
) -> None:
    verify = _example()["verify_sluice_signature"]
    with receiver() as hook:
        r = api.post(
            "/runs",
            {"pipeline": "test.chain", "input": {"n": 1}, "callback_url": hook.url},
            as_=service,
        )
        assert r.status_code == 201
        bell.drain()
        deliver_due()
    (req,) = hook.requests
    assert verify(service.key.webhook_secret, req.headers["Sluice-Signature"], req.body)
    assert not verify("whsec_wrong", req.headers["Sluice-Signature"], req.body)
    assert not verify(service.key.webhook_secret, req.headers["Sluice-Signature"], b"{}")


@pytest.mark.django_db
def test_every_endpoint_is_documented(client: Any) -> None:
    def plain(text: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", text)

    paths = client.get("/api/openapi.json").json()["paths"]
    doc = plain(DOC)
    for path, methods in paths.items():
        for method in methods:
            name = f"{method.upper()} {path}"
            assert f"`{method.upper()} {plain(path)}" in doc, f"{name} is not in docs/api.md"
