"""The offline provider: deterministic analysis of the input, labelled offline, journaled."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.builtin import thread_analysis as ta
from pipelines.llm import complete, offline

pytestmark = pytest.mark.core


def test_it_finds_lexicon_phrases_with_their_sentence_as_evidence() -> None:
    lexicon = offline.compile_lexicon({"deny": ["I never", "didn't happen"], "calm": ["thanks"]})
    hits = offline.find("Well. I never said that! Thanks anyway.", lexicon)
    assert [(h.label, h.phrase, h.evidence) for h in hits] == [
        ("deny", "I never", "I never said that!"),
        ("calm", "Thanks", "Thanks anyway."),
    ]


def test_it_summarizes_with_the_most_representative_sentences() -> None:
    text = (
        "Solar panels cut the plant's power bill. The canteen serves soup. "
        "Solar output peaked in July, and the panels paid for themselves. Parking is free."
    )
    assert offline.summarize(text, 2) == [
        "Solar panels cut the plant's power bill.",
        "Solar output peaked in July, and the panels paid for themselves.",
    ]
    assert offline.keywords(text, 2) == ["solar", "panels"]


def test_it_scores_sentiment_and_coverage() -> None:
    assert offline.sentiment("Thanks, that is great and helpful") == 1.0
    assert offline.sentiment("This is terrible, awful and broken") == -1.0
    assert offline.coverage(["refund", "invoice"], "We refunded you.") == (0.5, ["invoice"])


def test_the_darvo_analysis_is_deterministic_and_labelled_offline(settings: Any) -> None:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    data = ta.parse_thread({"thread": ta.SAMPLE_THREAD})
    first = complete(ta.DARVO, data)
    second = complete(ta.DARVO, data)
    assert first.output == second.output
    assert first.result()["generated_by"] == "offline"
    assert first.spec.model == "offline-lexicon-1"
    assert first.cost == 0 and first.input_tokens > 0
    found = {(f.label, f.quote) for f in first.output.findings}
    assert ("deny", "I never said 6.") in found
    assert ("deny", "You're making that up again.") in found
    assert any(label == "reverse" and q.startswith("After everything I do") for label, q in found)


def test_the_offline_provider_simulates_latency_when_asked(settings: Any) -> None:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_OFFLINE_LATENCY = 0.05
    data = ta.parse_thread({"thread": "A: hi"})
    assert complete(ta.PSYCH, data).latency_ms >= 50
