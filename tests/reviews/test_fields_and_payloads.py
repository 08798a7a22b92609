"""Editable fields (JSON Schema / pydantic → validation, form inputs) and how payloads are
presented to people (cards, confidence, evidence, safe links)."""

from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from reviews.forms import field_for
from reviews.presenters import present, safe_url
from reviews.schema import initial_values, schema_of, validate_edits

pytestmark = [pytest.mark.core]

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham"]},
        "votes": {"type": "integer", "minimum": 0, "maximum": 5},
        "urgent": {"type": "boolean", "default": False},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "note": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]},
    },
    "required": ["label", "votes"],
}


def test_it_validates_edits_against_the_schema_subset() -> None:
    clean, errors = validate_edits(SCHEMA, {"label": "ham", "votes": "3", "tags": ["a"]})
    assert errors == []
    assert clean == {"label": "ham", "votes": 3, "urgent": False, "tags": ["a"], "note": None}
    _, errors = validate_edits(
        SCHEMA,
        {
            "label": "eggs",
            "votes": 9,
            "tags": ["a", "b", "c", "d"],
            "note": "far too long",
            "extra": 1,
        },
    )
    assert {e["field"] for e in errors} == {"label", "votes", "tags", "note", "extra"}
    _, errors = validate_edits(SCHEMA, {})
    assert {(e["field"], e["message"]) for e in errors} == {
        ("label", "this field is required"),
        ("votes", "this field is required"),
    }


def test_it_takes_a_pydantic_model_or_instance_as_fields() -> None:
    class Verdict(pydantic.BaseModel):
        label: Literal["spam", "ham"]
        score: float = pydantic.Field(ge=0, le=1)

    schema = schema_of(Verdict)
    assert schema["properties"]["label"]["enum"] == ["spam", "ham"]
    assert validate_edits(schema, {"label": "spam", "score": 0.5}) == (
        {"label": "spam", "score": 0.5},
        [],
    )
    prefilled = schema_of(Verdict(label="ham", score=0.25))
    assert initial_values(prefilled, None) == {"label": "ham", "score": 0.25}
    with pytest.raises(ValueError):
        schema_of({"type": "array"})
    with pytest.raises(TypeError):
        schema_of(["not", "a", "schema"])


def test_it_prefills_from_the_payload_of_the_same_name() -> None:
    assert initial_values(SCHEMA, {"label": "spam", "other": 1}) == {
        "label": "spam",
        "urgent": False,
    }


def test_it_builds_a_real_input_per_field() -> None:
    props = SCHEMA["properties"]
    assert type(field_for(props["label"], True)).__name__ == "ChoiceField"
    votes = field_for(props["votes"], True)
    assert type(votes).__name__ == "IntegerField"
    assert votes.widget.attrs == {"min": 0, "max": 5}
    assert type(field_for(props["urgent"], False)).__name__ == "BooleanField"
    assert type(field_for(props["tags"], False)).__name__ == "LinesField"
    note = field_for(props["note"], False)
    assert type(note).__name__ == "CharField" and not note.required


def test_it_presents_analyses_as_cards() -> None:
    view = present(
        {
            "summary": "Two findings.",
            "document": "a.pdf",
            "results": [
                {"name": "Tone", "verdict": "calm", "score": 87, "quotes": ["all is well"]},
                {
                    "label": "Risk",
                    "explanation": "low",
                    "confidence": "40%",
                    "citations": [
                        {"text": "no risk", "document": "p. 2", "url": "https://x.test/2"}
                    ],
                    "model": "m-1",
                },
            ],
        }
    )
    assert view.lead == "Two findings." and view.facts == [("Document", "a.pdf")]
    tone, risk = view.cards
    assert (tone.title, tone.body, tone.confidence_pct, tone.level) == ("Tone", "calm", 87, "high")
    assert [e.quote for e in tone.evidence] == ["all is well"]
    assert (risk.confidence_pct, risk.level) == (40, "low")
    assert (risk.evidence[0].source, risk.evidence[0].url) == ("p. 2", "https://x.test/2")
    assert risk.facts == [("Model", "m-1")]


def test_a_plain_payload_still_shows_something() -> None:
    assert present("just text").lead == "just text"
    one = present({"confidence": 0.7, "evidence": "a quote", "answer": "yes"})
    assert one.cards[0].confidence_pct == 70 and one.cards[0].body == "yes"
    assert present([1, 2]).cards[0].body == "1"
    assert '"confidence": 0.7' in one.raw


@pytest.mark.parametrize(
    "url,ok",
    [
        ("https://example.com/a?b=1", True),
        ("http://example.com", True),
        ("javascript:alert(1)", False),
        (" JaVaScRiPt:alert(1)", False),
        ("data:text/html,x", False),
        ("//evil.test/x", False),
        ("https://exa mple.com", False),
        ("vbscript:x", False),
        (3, False),
    ],
)
def test_only_http_links_survive(url: object, ok: bool) -> None:
    assert (safe_url(url) != "") is ok
