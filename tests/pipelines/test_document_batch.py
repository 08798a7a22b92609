"""document_batch labels each stage's output with the model that wrote it (review finding: a
paid model's entities were labelled ``generated_by: "offline"``, the summaries' model)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.builtin import document_batch
from tests.pipelines.fake_llm import FakeLLM
from tests.support import Bell
from workflows import get_run, start

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def test_each_stage_is_labelled_with_its_own_model(
    bell: Bell, offline: Any, fake_llm: FakeLLM
) -> None:
    paid = f"openai-compatible:fake-model@{fake_llm.base_url}"
    offline.SLUICE_LLM_MODELS = {"document_batch.entities": paid}
    run = start("document_batch", document_batch.SAMPLE)
    bell.settle()
    out = get_run(run.pk).output
    assert out["generated_by"] == "offline, openai-compatible:fake-model"
    assert out["generated_by_stage"] == {
        "summarize": "offline",
        "entities": "openai-compatible:fake-model",
    }
    assert [d["generated_by_stage"] for d in out["documents"]] == 3 * [
        {"summarize": "offline", "entities": "openai-compatible:fake-model"}
    ]
    assert len(fake_llm.requests) == 3  # one entities call per document


def test_one_model_is_one_label(bell: Bell, offline: Any) -> None:
    run = start("document_batch", document_batch.SAMPLE)
    bell.settle()
    out = get_run(run.pk).output
    assert out["generated_by"] == "offline"
    assert out["generated_by_stage"] == {"summarize": "offline", "entities": "offline"}
