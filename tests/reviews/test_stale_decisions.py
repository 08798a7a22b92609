"""A decision sent twice (a double click on Approve on a slow network, a resent POST), through
Django's client.

The second POST of the same reviewer's same decision finds the gate closed by the first. It is
answered like the first (the redirect to the next gate and the "Approved …" message), not with
the 409 "Your comment was not saved: the gate closed" while the comment was saved. Any other
late decision (another outcome, another comment, another reviewer) is still refused with 409.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from reviews import services
from reviews.models import Gate
from reviews.services import decide_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def logged_in(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def flashes(c: Client, response: Any) -> str:
    assert response.status_code == 302
    page = c.get(response["Location"])
    assert page.status_code == 200
    return page.content.decode()


def test_the_same_decision_sent_twice_is_answered_like_the_first(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    following = open_gate(bell)
    c = logged_in(people.ana)
    sent = {"outcome": "approve", "comment": "Checked the refund. "}
    first = c.post(f"/reviews/{gate.pk}/decide/", sent)
    assert first.status_code == 302 and first["Location"] == f"/reviews/{following.pk}/"
    c.get(first["Location"])  # the first answer's page, with its message, as the browser does

    again = c.post(f"/reviews/{gate.pk}/decide/", sent)
    assert again.status_code == 302
    assert again["Location"] == first["Location"]
    body = flashes(c, again)
    assert "Approved" in body and "Next up" in body and "not saved" not in body
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.comment) == (
        "decided",
        "approve",
        "Checked the refund.",
    )
    assert Gate.objects.get(pk=following.pk).status == "open"  # the next gate is untouched


def test_a_repeat_that_raced_the_first_inside_the_service_is_a_success_too(
    bell: Bell, people: People, monkeypatch: Any
) -> None:
    """The second POST found the gate open and then lost to the first in ``decide_gate``."""
    gate = open_gate(bell)
    real = services.decide_gate

    def first_wins(gate_id: int, **kwargs: Any) -> Any:
        real(gate_id, **kwargs)  # the first request, committing while this one waited
        return real(gate_id, **kwargs)  # this one: GateClosedError

    monkeypatch.setattr(services, "decide_gate", first_wins)
    c = logged_in(people.ana)
    response = c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "reject", "comment": "No"})
    assert response.status_code == 302 and response["Location"] == "/reviews/"
    body = flashes(c, response)
    assert "Rejected" in body and "queue is empty" in body
    assert Gate.objects.get(pk=gate.pk).outcome == "reject"


@pytest.mark.parametrize(
    "again",
    [
        {"outcome": "reject", "comment": "Fine"},  # another outcome
        {"outcome": "approve", "comment": "Fine, but check the date"},  # another comment
        {"outcome": "approve", "comment": ""},
    ],
)
def test_a_different_late_decision_is_still_refused(
    bell: Bell, people: People, again: dict[str, str]
) -> None:
    gate = open_gate(bell)
    c = logged_in(people.ana)
    assert (
        c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": "Fine"}).status_code
        == 302
    )
    response = c.post(f"/reviews/{gate.pk}/decide/", again)
    assert response.status_code == 409
    assert "not saved" in response.content.decode()
    gate.refresh_from_db()
    assert (gate.outcome, gate.comment) == ("approve", "Fine")


def test_the_same_decision_by_someone_else_is_still_refused(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    decide_gate(gate.pk, outcome="approve", comment="Fine", actor="ben", user=people.ben)
    c = logged_in(people.ana)
    response = c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": "Fine"})
    assert response.status_code == 409
    assert "not saved" in response.content.decode()


def test_the_login_page_says_why_when_it_was_sent_there_and_never_echoes_next(
    people: People,
) -> None:
    """The note for a page whose session ended (templates/registration/login.html)."""
    note = (
        "Sign in to open the page you asked for. If you were signed in a moment ago, your session "
        "ended (signed out in another tab, or it expired)."
    )
    c = Client()
    body = c.get("/accounts/login/", {"next": '/reviews/"><b>x</b>'}).content.decode()
    assert note in body
    assert "<b>x</b>" not in body
    assert note not in Client().get("/accounts/login/").content.decode()  # not sent there
