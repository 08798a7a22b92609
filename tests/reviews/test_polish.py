"""Polish of the gate page: the decider reads "You rejected …", a turned-down gate links to the
run's next attempt, newlines survive on the decided card, text boxes grow (browser test in
tests/reviews/test_browser_bulk.py)."""

from __future__ import annotations

import pytest
from django.test import Client

from reviews.models import Gate
from reviews.services import decide_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import start

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def as_user(user: object) -> Client:
    c = Client()
    c.force_login(user)
    return c


def banner(html: str) -> str:
    return html.split('data-testid="closed-banner"')[1].split("</div>")[0]


def test_the_decider_reads_you_rejected_and_others_read_who_did(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    decide_gate(gate.pk, outcome="reject", comment="No.", actor="ana", user=people.ana)
    mine = as_user(people.ana).get(f"/reviews/{gate.pk}/").content.decode()
    assert "You rejected this gate at" in banner(mine)
    assert "Already decided by" not in mine and "you (ana)" in mine
    theirs = as_user(people.ben).get(f"/reviews/{gate.pk}/").content.decode()
    assert "Already decided by ana at" in banner(theirs) and "(reject)" in banner(theirs)


def test_the_decider_reads_you_approved_after_a_late_claim(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    c = as_user(people.ana)
    response = c.post(f"/reviews/{gate.pk}/claim/", follow=True)
    text = response.content.decode()
    assert "You approved this gate at" in text and "Already decided by ana" not in text


def test_a_rejected_gate_links_to_the_runs_next_attempt(bell: Bell, people: People) -> None:
    run = start("test.review_loop", {"max_rounds": 3})
    bell.drain()
    first = Gate.objects.get(run=run, status="open")
    decide_gate(first.pk, outcome="reject", comment="Try again", actor="ana", user=people.ana)
    bell.drain()
    second = Gate.objects.get(run=run, status="open")
    assert second.attempt == 2
    html = as_user(people.ana).get(f"/reviews/{first.pk}/").content.decode()
    link = html.split('data-testid="next-attempt"')[0].rsplit("<a ", 1)[1]
    assert f'href="/reviews/{second.pk}/"' in link
    assert "(attempt 2)" in html.split('data-testid="next-attempt"')[1].split("</a>")[0]
    # An approved gate has no next attempt to point to.
    decide_gate(second.pk, outcome="approve", actor="ana", user=people.ana)
    bell.drain()
    approved = as_user(people.ana).get(f"/reviews/{second.pk}/").content.decode()
    assert 'data-testid="next-attempt"' not in approved


def test_a_next_attempt_the_reviewer_may_not_see_is_not_linked(bell: Bell, people: People) -> None:
    run = start("test.review_loop", {"max_rounds": 3})
    bell.drain()
    first = Gate.objects.get(run=run, status="open")
    decide_gate(first.pk, outcome="reject", actor="ana", user=people.ana)
    bell.drain()
    Gate.objects.filter(run=run, status="open").update(group="legal")
    html = as_user(people.ana).get(f"/reviews/{first.pk}/").content.decode()
    assert 'data-testid="next-attempt"' not in html


def test_the_decided_card_keeps_the_newlines_of_edits_and_comments(
    bell: Bell, people: People
) -> None:
    from tests.reviews.workflows import SENTIMENT_FIELDS

    gate = open_gate(bell, fields=SENTIMENT_FIELDS)
    decide_gate(
        gate.pk,
        outcome="approve",
        comment="Line one\nLine two",
        edits={"sentiment": "neutral", "score": 0.5, "notes": "Dear Lee,\n\nThanks.\nBo"},
        actor="ana",
        user=people.ana,
    )
    html = as_user(people.ana).get(f"/reviews/{gate.pk}/").content.decode()
    # Kept in the markup; the browser test checks reviews.css shows them (white-space: pre-wrap).
    assert "Dear Lee,\n\nThanks.\nBo" in html
