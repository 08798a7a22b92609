"""docs/pipelines.md stays true: its machine example defines a valid machine whose graph is
exactly the mermaid printed under it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.machine import unregister

pytestmark = pytest.mark.core

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipelines.md"


def block(marker: str, lang: str) -> str:
    m = re.search(rf"<!-- docs-example: {marker} -->\n```{lang}\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/pipelines.md has no {marker} example"
    return m.group(1)


def test_the_machine_example_defines_the_graph_shown_under_it() -> None:
    namespace: dict[str, object] = {"__name__": "docs_example"}
    try:
        exec(compile(block("machine", "python"), str(DOC), "exec"), namespace)
        machine = namespace["invoice_approval"]
        assert machine.to_mermaid() == block("mermaid", "mermaid")  # type: ignore[attr-defined]
    finally:
        unregister("docs.invoice_approval")


def test_the_settings_the_doc_names_exist() -> None:
    from django.conf import settings

    text = DOC.read_text()
    for name in set(re.findall(r"`(SLUICE_LLM_[A-Z_]+)`", text)):
        assert hasattr(settings, name), name
