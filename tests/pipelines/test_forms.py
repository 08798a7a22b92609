"""The start form's fields come from JSON Schema and read back into input data."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from pipelines import forms
from pipelines.forms import build_fields, parse_budget, parse_post

pytestmark = pytest.mark.core


class Item(BaseModel):
    name: str
    qty: int = 1


class Everything(BaseModel):
    title: str = Field(..., title="Title")
    notes: str = Field("", json_schema_extra={"widget": "textarea"})
    count: int = Field(3, ge=0, le=10)
    ratio: float | None = None
    urgent: bool = False
    mode: Literal["fast", "slow"] = "fast"
    tags: list[str] = []
    items: list[Item] = []
    extra: dict[str, int] = {}


SCHEMA = Everything.model_json_schema()


def test_it_builds_one_field_per_property_with_the_right_widget() -> None:
    fields = {f.name: f for f in build_fields(SCHEMA, {"items": [{"name": "a"}]})}
    kinds = {name.split(".", 1)[1]: f.kind for name, f in fields.items()}
    assert kinds == {
        "title": "text",
        "notes": "textarea",
        "count": "integer",
        "ratio": "number",
        "urgent": "checkbox",
        "mode": "select",
        "tags": "lines",
        "items": "array",
        "extra": "json",
    }
    assert fields["input.title"].required and not fields["input.ratio"].required
    assert fields["input.count"].attrs == {"min": 0, "max": 10, "step": "1"}
    assert fields["input.mode"].choices == ["fast", "slow"]
    item = fields["input.items"].children[0]
    assert [c.name for c in item.children] == ["input.items.0.name", "input.items.0.qty"]
    assert item.children[0].value == "a" and item.children[1].value == 1  # default filled in
    assert fields["input.items"].template.children[0].name == "input.items.__index__.name"


def test_it_reads_a_submitted_form_back_into_input_data() -> None:
    post = {
        "input.title": "T",
        "input.notes": "a\r\nb",
        "input.count": "4",
        "input.ratio": "",
        "input.urgent": "on",
        "input.mode": "slow",
        "input.tags": "x\n\n y \n",
        "input.items.0.name": "a",
        "input.items.0.qty": "2",
        "input.items.5.name": "b",
        "input.items.5.qty": "",
        "input.extra": '{"k": 1}',
    }
    data, errors = parse_post(SCHEMA, post)
    assert errors == {}
    assert data == {
        "title": "T",
        "notes": "a\nb",
        "count": 4,
        "ratio": None,
        "urgent": True,
        "mode": "slow",
        "tags": ["x", "y"],
        "items": [{"name": "a", "qty": 2}, {"name": "b"}],
        "extra": {"k": 1},
    }
    assert Everything.model_validate(data).items[1].qty == 1


def test_it_reports_what_the_form_itself_cannot_read() -> None:
    _, errors = parse_post(SCHEMA, {"input.count": "four", "input.extra": "{oops"})
    assert errors["count"] == ["Enter a number."]
    assert errors["extra"][0].startswith("Not valid JSON")
    _, errors = parse_post(SCHEMA, {"input.count": "2.5"})
    assert errors == {"count": ["Enter a whole number."]}


def test_the_budget_is_optional_and_positive() -> None:
    assert parse_budget("") == (None, "")
    assert parse_budget("0.5")[0] is not None
    assert parse_budget("-1")[1] and parse_budget("abc")[1]


@pytest.mark.parametrize("raw", ["1E+999999999", "-1E+999999999", "1E-999999999999999999"])
@pytest.mark.parametrize("kind", ["integer", "number"])
def test_it_answers_extreme_exponents_with_a_message_not_an_overflow(raw: str, kind: str) -> None:
    # make test-long's fuzzing found 1E+999999999 in a nested integer field raising
    # decimal.Overflow (a 500) where the form checked the number's size with abs().
    result = forms._number(raw, kind)
    assert isinstance(result, str) or result == 0
