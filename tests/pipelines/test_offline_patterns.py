"""The offline provider's patterns take linear time: a document may hold 200,000 characters, and
a pattern that backtracks from every position took minutes on some of them (review finding:
``"A'" * 50_000`` kept the organization pattern busy for 25 s, the entities step timed out and
was retried until it failed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.builtin import document_batch
from pipelines.llm import offline

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parents[2]
SIZE = 200_000
# Units repeated to SIZE characters: each made one of the entity patterns (organizations,
# e-mail addresses, amounts) backtrack over the rest of the text from every position.
HOSTILE = ["A'", "A-", "A&", "a.", "x-", "1,", "1.", "€1,", "a@a-", ".a", "Aa Aa ", "Mr Aa "]

TIMING = """
import json, sys, time
from pipelines.llm import offline
size = int(sys.argv[2])
out = {}
for unit in json.loads(sys.argv[1]):
    text = (unit * (size // len(unit) + 1))[:size]
    started = time.perf_counter()
    offline.entities(text)
    out[unit] = time.perf_counter() - started
print(json.dumps(out))
"""


def test_entities_of_hostile_text_take_well_under_a_second_each() -> None:
    # In a child process: a pattern that backtracks cannot be interrupted, so the timeout
    # there turns minutes into a failure here.
    try:
        done = subprocess.run(
            [sys.executable, "-c", TIMING, json.dumps(HOSTILE), str(SIZE)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"offline.entities took over 30 s for {len(HOSTILE)} texts of {SIZE:,} chars")
    took = json.loads(done.stdout)
    slow = {unit: round(seconds, 2) for unit, seconds in took.items() if seconds > 0.5}
    assert not slow, f"seconds per {SIZE:,}-character text: {slow}"


def test_many_distinct_names_do_not_make_entities_quadratic() -> None:
    names = " ".join(f"Q{n:05d}x Corp said" for n in range(12_000))  # ~200,000 characters
    started = time.perf_counter()
    found = offline.entities(names)
    assert time.perf_counter() - started < 1.0
    assert len(found["organizations"]) == offline.MAX_ENTITIES
    assert found["organizations"][:2] == ["Q00000x Corp", "Q00001x Corp"]


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        (
            "Write to press@northwind.example or a.b+c@mail.co.uk.",
            "emails",
            ["press@northwind.example", "a.b+c@mail.co.uk"],
        ),
        (
            "Fees of 1,200.50 USD and $4.2 million, or €750,000.",
            "money",
            ["1,200.50 USD", "$4.2 million", "€750,000"],
        ),
        (
            "Engineers at Globex Ltd and O'Brien-Walsh Group met Acme Corp.",
            "organizations",
            ["Globex Ltd", "O'Brien-Walsh Group", "Acme Corp."],
        ),
        (
            "Northwind Labs and the University of Leeds signed.",
            "organizations",
            ["University of Leeds", "Northwind Labs"],
        ),
    ],
    ids=["emails", "money", "organizations", "organizations-of"],
)
def test_bounded_patterns_still_find_ordinary_entities(
    text: str, kind: str, expected: list[str]
) -> None:
    assert offline.entities(text)[kind] == expected


@pytest.mark.parametrize(
    "markup", ["<a" * (SIZE // 2), "<script>" * (SIZE // 8), "<style " * (SIZE // 7), "<" * SIZE]
)
def test_stripping_hostile_markup_takes_linear_time(markup: str) -> None:
    """``<(script|style)\\b.*?</\\1>|<[^>]+>`` scanned to the end of the text from every "<"
    without an end: about ten seconds for 200,000 characters."""
    started = time.perf_counter()
    document_batch.extract_document({"title": "t", "text": markup})
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("html", "text"),
    [
        (
            "<p>Hi <b>there</b></p><script>alert(1)</script>after<STYLE a=1>p{}</style>end",
            "Hi there after end",
        ),
        ("<script>never closed, so only its tag goes", "never closed, so only its tag goes"),
        ("a < b and c > d", "a d"),
        ("<style>a</STYLE>b<script src=x></script>c", "b c"),
    ],
)
def test_markup_is_stripped_as_before(html: str, text: str) -> None:
    assert document_batch.extract_document({"title": "t", "text": html})["text"] == text


def test_entities_lists_at_most_max_entities_of_a_kind() -> None:
    dates = " ".join(f"{2000 + n // 12}-{n % 12 + 1:02d}-01" for n in range(300))
    assert len(offline.entities(dates)["dates"]) == offline.MAX_ENTITIES
