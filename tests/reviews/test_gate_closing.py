"""A gate page whose gate closes while it is open (issue 8, item 6), through Django's client.

The live page polls ``/reviews/<gate>/status/``: once the gate is closed the answer must switch
the whole page (banner, header, decision panel), and a decision that arrives too late must say so
once and hand the typed comment back instead of dropping it. The browser side (the page updating
by itself, the comment kept) is in test_browser.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from reviews.models import Gate, GateApproval, GateEvent
from reviews.services import (
    GateClosedError,
    claim_gate,
    decide_gate,
    expire_due_gates,
    open_queue,
)
from tests.reviews.conftest import People, open_gate
from tests.reviews.workflows import BOOKED
from tests.support import Bell
from workflows import cancel, get_run, start

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}


def expire(gate: Gate) -> None:
    """Write a past deadline and run the expiry sweep, as beat would."""
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=5))
    expire_due_gates()
    assert Gate.objects.get(pk=gate.pk).status == "expired"


def logged_in(user: object) -> Client:
    c = Client()
    c.force_login(user)  # type: ignore[arg-type]
    return c


def test_it_switches_header_and_panel_when_the_poll_sees_the_gate_closed(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    c = logged_in(people.ana)
    expire(gate)
    body = c.get(f"/reviews/{gate.pk}/status/", **HTMX).content.decode()
    assert 'id="gate-closed"' in body and "expired at" in body
    # Header and panel come along as out-of-band swaps, in their closed state.
    # header, panel, activity, and the live poller replaced by an inert one (polls and stream end)
    assert body.count('hx-swap-oob="true"') == 4
    assert 'id="gate-live" hidden hx-swap-oob="true">' in body
    assert 'id="gate-head"' in body and 'id="decision-panel"' in body
    assert "Expired" in body and "data-deadline" not in body  # no countdown, no "due now"
    assert 'name="outcome"' not in body and "/claim/" not in body  # no Approve/Reject/Claim
    assert 'id="unsent-comment"' in body  # where the page puts a comment it could not send
    assert "{#" not in body and "{%" not in body


def test_a_decision_after_expiry_says_so_once_and_keeps_the_comment(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    c = logged_in(people.ana)
    expire(gate)
    comment = "Checked every clause; the refund is fine."
    response = c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": comment})
    assert response.status_code == 409
    body = response.content.decode()
    assert body.count("expired at") == 1  # the banner only, no second flash message
    assert comment in body and "not saved" in body
    assert 'data-testid="unsent-comment" hidden' not in body
    assert 'name="outcome"' not in body
    assert Gate.objects.get(pk=gate.pk).comment == ""


def test_a_decision_on_a_gate_claimed_meanwhile_hands_the_comment_back(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    c = logged_in(people.ana)
    claim_gate(gate.pk, people.ben)
    response = c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": "Mine"})
    assert response.status_code == 409
    body = response.content.decode()
    assert body.count("Claimed by") == 1 and "claimed this gate before" in body
    assert ">Mine</textarea>" in body and 'name="outcome"' not in body


def test_a_claim_click_on_a_closed_gate_closes_the_whole_page(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    c = logged_in(people.ana)
    decide_gate(gate.pk, outcome="reject", actor="ben", user=people.ben)
    body = c.post(f"/reviews/{gate.pk}/claim/", **HTMX).content.decode()
    assert 'id="decision-panel"' in body and 'name="outcome"' not in body
    assert 'id="gate-head" hx-swap-oob="true"' in body
    assert 'id="gate-closed"' in body and "Already decided by ben" in body


def test_an_invalid_decision_on_a_closed_gate_still_hands_the_comment_back(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    c = logged_in(people.ana)
    expire(gate)
    response = c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "maybe", "comment": "Keep me"})
    assert response.status_code == 409
    body = response.content.decode()
    assert ">Keep me</textarea>" in body and body.count("expired at") == 1


def test_a_cancel_that_undoes_steps_first_closes_the_gate_at_once(
    bell: Bell, people: People
) -> None:
    """The run is compensating until its undos are done, but it takes no more decisions: its
    gate closes in the cancel's own transaction, not when the undos end."""
    BOOKED.clear()
    run = start("test.saga_review", {"approvals": 2})
    bell.drain()
    gate = Gate.objects.get(run=run, status="open")
    cancel(run.pk, "the customer called it off")
    assert get_run(run.pk).status == "compensating"
    gate.refresh_from_db()
    assert gate.status == "canceled"
    assert GateEvent.objects.get(gate=gate, kind="canceled").detail == {"reason": "run canceled"}
    assert gate.pk not in [g.pk for g in open_queue(people.ben)]
    with pytest.raises(GateClosedError):
        claim_gate(gate.pk, people.ben)
    with pytest.raises(GateClosedError):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    assert not GateApproval.objects.filter(gate=gate).exists()
    bell.settle()
    assert get_run(run.pk).status == "canceled"
    assert BOOKED == ["do:flight", "undo:flight"]
    assert GateEvent.objects.filter(gate=gate, kind="canceled").count() == 1
