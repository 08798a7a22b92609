"""Queue rows are distinct: each shows its run's title (the input's "Title", shown to
reviewers) and a short excerpt, escaped and bidi-isolated, without costing queries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from pipelines.builtin import document_batch, support_ticket
from pipelines.registry import get_pipeline
from reviews.models import Gate
from reviews.summary import describe_input, describe_run
from tests.reviews.conftest import People
from tests.support import Bell
from workflows import start
from workflows.core.definitions import get_workflow

pytestmark = [pytest.mark.core]


@pytest.fixture
def offline(settings: Any) -> Any:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    settings.SLUICE_LLM_OFFLINE_LATENCY = 0.0
    return settings


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    """Pool rows are cached per process; a flushed test database no longer has them."""
    from workflows.core import pools

    pools.clear_cache()
    yield
    pools.clear_cache()


def schema(name: str) -> dict[str, Any]:
    return get_workflow(name).input_schema()


def test_it_reads_the_title_and_the_main_text_of_a_thread() -> None:
    sample = get_pipeline("thread_analysis").extra["sample_input"]
    subject, excerpt = describe_input(sample, schema("thread_analysis"))
    assert subject == "Pick-up argument"
    # Newlines become spaces: one line of the thread, cut with an ellipsis.
    assert excerpt.startswith("Alex: You said you'd pick me up at 6 and I waited an hour. Sam:")
    assert len(excerpt) <= 280 and excerpt.endswith("…")


def test_it_reads_a_support_tickets_subject_and_message() -> None:
    subject, excerpt = describe_input(support_ticket.SAMPLE, schema("support_ticket"))
    assert subject == support_ticket.SAMPLE["subject"]
    assert excerpt == " ".join(support_ticket.SAMPLE["message"].split())[:280]


def test_it_names_the_items_when_the_input_has_no_text_of_its_own() -> None:
    sample = get_pipeline("document_batch").extra["sample_input"]
    subject, excerpt = describe_input(sample, schema("document_batch"))
    assert subject == ""
    assert excerpt == (
        "3 documents: Quarterly update, Partnership announcement, Incident report"
    ), document_batch


def test_it_says_nothing_of_what_it_cannot_read() -> None:
    assert describe_input(None) == ("", "")
    assert describe_input({"n": 3, "flag": True}) == ("", "")
    assert describe_input({"title": "  "}) == ("", "")


@pytest.mark.django_db
def test_an_unregistered_pipeline_still_gets_the_plain_reading() -> None:
    class FakeRun:
        workflow = "gone.pipeline"
        input = {"title": "Old run", "body": "Some text"}

    assert describe_run(FakeRun()) == ("Old run", "Some text")


def thread_gate(bell: Bell, title: str, thread: str) -> Gate:
    run = start("thread_analysis", {"title": title, "thread": thread})
    bell.settle()
    return Gate.objects.get(run=run, status="open")


THREAD = "Sam: I never said that. You're making it up, you always do this.\nAlex: I have it here."


@pytest.mark.django_db(transaction=True)
def test_thread_analysis_rows_show_their_runs_titles_and_excerpts(
    bell: Bell, offline: Any, people: People
) -> None:
    first = thread_gate(bell, "Pick-up argument", THREAD)
    second = thread_gate(bell, "Holiday plans", "Ann: Where shall we go?\nBo: Somewhere warm.")
    assert (first.subject, second.subject) == ("Pick-up argument", "Holiday plans")
    c = Client()
    c.force_login(people.ana)
    html = c.get("/reviews/").content.decode()
    assert html.count('data-testid="row-subject"') == 2
    assert ">Pick-up argument</a>" in html and ">Holiday plans</a>" in html
    assert 'title="Ann: Where shall we go? Bo: Somewhere warm."' in html
    # The gate's own title stays, as the kind of check the row asks for.
    assert 'class="rv-gate-kind"' in html


@pytest.mark.django_db(transaction=True)
def test_row_text_is_escaped_and_bidi_controls_are_shown(
    bell: Bell, offline: Any, people: People
) -> None:
    thread_gate(bell, "invoice-\u202egnp.exe <b>x</b>", "Eve: <script>alert(1)</script> hi")
    c = Client()
    c.force_login(people.ana)
    html = c.get("/reviews/").content.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>x</b>" not in html
    subject = html.split('data-testid="row-subject">')[1].split("</a>")[0]
    assert 'class="bidi-mark"' in subject and "\u202e" not in subject
