"""Bulk decisions from the queue: each gate decided on its own through decide_gate, the others
skipped with the reason; only gates the reviewer may see; CSRF; the result page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from reviews import bulk
from reviews.models import Gate, GateEvent
from reviews.services import InvalidDecisionError, claim_gate, decide_gate, expire_due_gates
from tests.reviews.conftest import People, open_gate
from tests.reviews.workflows import SENTIMENT_FIELDS
from tests.support import Bell
from workflows import get_run
from workflows.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def as_user(user: Any, csrf: bool = False) -> Client:
    c = Client(enforce_csrf_checks=csrf)
    c.force_login(user)
    return c


def test_it_approves_every_open_gate_with_one_comment(bell: Bell, people: People) -> None:
    gates = [open_gate(bell, title=f"Gate {i}") for i in range(3)]
    result = bulk.bulk_decide(people.ana, [g.pk for g in gates], outcome="approve", comment="ok")
    assert [g.pk for g in result.decided] == [g.pk for g in gates] and result.skipped == []
    for gate in Gate.objects.filter(pk__in=[g.pk for g in gates]):
        assert (gate.status, gate.outcome, gate.comment) == ("decided", "approve", "ok")
        assert (gate.decided_by, gate.decided_by_user_id) == ("ana", people.ana.pk)
        assert GateEvent.objects.filter(gate=gate, kind="decided", actor="ana").count() == 1
    bell.drain()
    for gate in gates:
        run = get_run(gate.run_id)
        assert run.status == "succeeded" and run.output["outcome"] == "approve"


def test_it_skips_what_it_may_not_decide_and_says_why(bell: Bell, people: People) -> None:
    fine = open_gate(bell, title="Fine")
    expired = open_gate(bell, title="Late", timeout_s=60)
    Gate.objects.filter(pk=expired.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    expire_due_gates()
    claimed = open_gate(bell, title="Bens")
    claim_gate(claimed.pk, people.ben)
    decided = open_gate(bell, title="Done")
    decide_gate(decided.pk, outcome="reject", actor="ben", user=people.ben)
    needs = open_gate(bell, title="Needs values", fields=SENTIMENT_FIELDS, payload={"x": 1})
    odd = open_gate(bell, title="Odd", choices=["ship", "hold"], on_timeout="hold")
    legal = open_gate(bell, title="Legal", group="legal")
    ids = [fine.pk, expired.pk, claimed.pk, decided.pk, needs.pk, odd.pk, legal.pk, 999_999]
    result = bulk.bulk_decide(people.ana, ids, outcome="approve", comment="batch")
    assert [g.pk for g in result.decided] == [fine.pk]
    reasons = {s.gate_id: (s.reason, s.message) for s in result.skipped}
    assert reasons[expired.pk][0] == "expired" and "expired at" in reasons[expired.pk][1]
    assert reasons[claimed.pk] == ("claimed", "claimed by ben")
    assert reasons[decided.pk][0] == "decided" and "ben" in reasons[decided.pk][1]
    assert reasons[needs.pk][0] == "needs_edits" and "score, sentiment" in reasons[needs.pk][1]
    assert reasons[odd.pk][0] == "no_choice"
    # Another group's gate answers exactly like a gate that does not exist.
    not_found = ("not_found", "not found, or not in your groups")
    assert reasons[legal.pk] == reasons[999_999] == not_found
    assert Gate.objects.get(pk=legal.pk).status == "open"
    assert Gate.objects.get(pk=claimed.pk).status == "open"
    assert Gate.objects.get(pk=needs.pk).status == "open"


def test_prefilled_field_values_are_decided_as_the_gate_page_would(
    bell: Bell, people: People
) -> None:
    gate = open_gate(
        bell, fields=SENTIMENT_FIELDS, payload={"sentiment": "positive", "score": 0.8, "y": 2}
    )
    result = bulk.bulk_decide(people.ana, [gate.pk], outcome="approve")
    assert [g.pk for g in result.decided] == [gate.pk], result.skipped
    edits = Gate.objects.get(pk=gate.pk).edits
    assert (edits["sentiment"], edits["score"]) == ("positive", 0.8) and "y" not in edits


def test_a_gate_of_another_tenants_run_is_not_found(bell: Bell, people: People) -> None:
    ours, theirs = open_gate(bell, title="Ours"), open_gate(bell, title="Theirs")
    Run.objects.filter(pk=theirs.run_id).update(tenant="globex")
    result = bulk.bulk_decide(people.ana, [ours.pk, theirs.pk], outcome="reject")
    assert [g.pk for g in result.decided] == [ours.pk]
    assert [(s.gate_id, s.reason) for s in result.skipped] == [(theirs.pk, "not_found")]
    assert Gate.objects.get(pk=theirs.pk).status == "open"


def test_an_id_no_gate_can_have_is_not_found(bell: Bell, people: People) -> None:
    """Ids past 64 bits (which SQLite refuses to compare) and below 1 are skipped as not
    found, and the rest of the batch is decided."""
    gate = open_gate(bell)
    huge, negative = "99999999999999999999", "-99999999999999999999"
    client = Client()
    client.force_login(people.ana)
    r = client.post(
        "/reviews/bulk/", {"gate": [str(gate.pk), huge, negative, "0"], "outcome": "approve"}
    )
    assert r.status_code == 302  # back to the queue, with the batch's report
    gate.refresh_from_db()
    assert (gate.status, gate.outcome) == ("decided", "approve")
    result = bulk.bulk_decide(people.ana, [huge, negative], outcome="reject")
    assert not result.decided
    assert [(s.gate_id, s.reason) for s in result.skipped] == [
        (int(huge), "not_found"),
        (int(negative), "not_found"),
    ]


def test_a_comment_with_a_nul_decides_nothing_and_says_why(bell: Bell, people: People) -> None:
    """PostgreSQL cannot store a NUL in text: the form says so (it was a 500 there)."""
    gate = open_gate(bell)
    client = Client()
    client.force_login(people.ana)
    r = client.post(
        "/reviews/bulk/",
        {"gate": [str(gate.pk)], "outcome": "approve", "comment": "ok\x00then"},
        follow=True,
    )
    assert r.status_code == 200
    assert "The comment contains a NUL character" in r.content.decode()
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_a_gate_decided_meanwhile_is_skipped_by_the_swap(
    bell: Bell, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before deciding can pass and the gate still close before the swap: the
    decision is race-checked on its own by decide_gate, and reported as skipped."""
    first, second = open_gate(bell, title="A"), open_gate(bell, title="B")
    real = bulk.services.decide_gate

    def racing(gate_id: Any, **kw: Any) -> Gate:
        if gate_id == first.pk:  # ben gets there first
            real(gate_id, outcome="reject", actor="ben", user=people.ben)
        return real(gate_id, **kw)

    monkeypatch.setattr(bulk.services, "decide_gate", racing)
    result = bulk.bulk_decide(people.ana, [first.pk, second.pk], outcome="approve")
    assert [g.pk for g in result.decided] == [second.pk]
    assert [(s.gate_id, s.reason) for s in result.skipped] == [(first.pk, "decided")]
    assert Gate.objects.get(pk=first.pk).decided_by == "ben"


def test_staff_may_decide_a_gate_someone_claimed(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ben)
    result = bulk.bulk_decide(people.sam, [gate.pk], outcome="reject", comment="no")
    assert [g.pk for g in result.decided] == [gate.pk]


def test_only_approve_or_reject(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    with pytest.raises(InvalidDecisionError):
        bulk.bulk_decide(people.ana, [gate.pk], outcome="ship")
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_the_form_decides_and_reports_the_result_on_the_queue(bell: Bell, people: People) -> None:
    fine, other = open_gate(bell, title="Fine one"), open_gate(bell, title="Claimed one")
    claim_gate(other.pk, people.ben)
    c = as_user(people.ana)
    response = c.post(
        "/reviews/bulk/",
        {
            "gate": [fine.pk, other.pk],
            "outcome": "approve",
            "comment": " all good ",
            "next": "/reviews/?claim=unclaimed",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/reviews/?claim=unclaimed"
    html = c.get(response["Location"]).content.decode()
    assert "Approved 1 gate." in html
    assert "Skipped 1 gate:" in html and "“Claimed one”</bdi> — claimed by ben." in html
    assert Gate.objects.get(pk=fine.pk).comment == "all good"


def test_the_form_refuses_nonsense_without_deciding(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    c = as_user(people.ana)
    for data, message in (
        ({"gate": [gate.pk], "outcome": "ship"}, "Choose Approve or Reject"),
        ({"outcome": "approve"}, "Select at least one gate first."),
        ({"gate": [gate.pk], "outcome": "approve", "comment": "x" * 5001}, "longer than 5000"),
        ({"gate": [gate.pk], "outcome": "approve", "next": "//evil.example/"}, "Approved 1"),
    ):
        response = c.post("/reviews/bulk/", data, follow=True)
        assert response.redirect_chain[-1][0] == "/reviews/"
        assert message in response.content.decode()
    assert Gate.objects.get(pk=gate.pk).status == "decided"


def test_the_form_needs_its_csrf_token_and_a_reviewer(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    assert (
        as_user(people.ana, csrf=True)
        .post("/reviews/bulk/", {"gate": [gate.pk], "outcome": "approve"})
        .status_code
        == 403
    )
    assert (
        as_user(people.otto)
        .post("/reviews/bulk/", {"gate": [gate.pk], "outcome": "approve"})
        .status_code
        == 403
    )
    anonymous = Client().post("/reviews/bulk/", {"gate": [gate.pk], "outcome": "approve"})
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    assert as_user(people.ana).get("/reviews/bulk/").status_code == 405
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_the_queue_offers_the_bulk_form_and_a_box_per_row(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    html = as_user(people.ana).get("/reviews/").content.decode()
    assert 'id="bulk-form"' in html and 'action="/reviews/bulk/"' in html
    assert "csrfmiddlewaretoken" in html.split('<form id="bulk-form"')[1].split("</form>")[0]
    assert f'name="gate" value="{gate.pk}" form="bulk-form"' in html


# --- four eyes ---------------------------------------------------------------------------------


def test_a_four_eyes_approval_is_partial_until_another_approves(bell: Bell, people: People) -> None:
    gate = open_gate(bell, approvals=2)
    first = bulk.bulk_decide(people.ana, [gate.pk], outcome="approve", comment="one")
    assert first.decided == [] and first.skipped == []
    assert [(p.gate.pk, p.count, p.required) for p in first.partial] == [(gate.pk, 1, 2)]
    assert Gate.objects.get(pk=gate.pk).status == "open"
    # The same reviewer again changes nothing and says so; a second reviewer closes the gate.
    again = bulk.bulk_decide(people.ana, [gate.pk], outcome="approve")
    assert again.partial == [] and [s.reason for s in again.skipped] == ["already_approved"]
    second = bulk.bulk_decide(people.ben, [gate.pk], outcome="approve")
    assert [g.pk for g in second.decided] == [gate.pk] and second.partial == []
    closed = Gate.objects.get(pk=gate.pk)
    assert (closed.status, closed.decided_by) == ("decided", "ana, ben")
    bell.drain()
    assert get_run(gate.run_id).output["approvals"] == ["ana", "ben"]


def test_separation_of_duties_is_a_skip_with_its_reason(bell: Bell, people: People) -> None:
    own = open_gate(bell, created_by="ana", separation_of_duties=True)
    other = open_gate(bell, title="Other")
    result = bulk.bulk_decide(people.ana, [own.pk, other.pk], outcome="approve")
    assert [g.pk for g in result.decided] == [other.pk]
    [skipped] = result.skipped
    assert (skipped.gate_id, skipped.reason) == (own.pk, "separation_of_duties")
    assert "ana started this run" in skipped.message
    assert Gate.objects.get(pk=own.pk).status == "open"
    # Rejecting your own run's gate stays allowed, in bulk as on the page.
    rejected = bulk.bulk_decide(people.ana, [own.pk], outcome="reject")
    assert [g.pk for g in rejected.decided] == [own.pk]


def test_the_form_reports_a_partial_approval_as_one_of_two(bell: Bell, people: People) -> None:
    gate = open_gate(bell, title="Payout", approvals=2)
    response = as_user(people.ana).post(
        "/reviews/bulk/", {"gate": [gate.pk], "outcome": "approve"}, follow=True
    )
    html = response.content.decode()
    assert "Approved 1 gate" not in html
    assert 'data-testid="bulk-partial"' in html and "approved (1 of 2)" in html
    assert Gate.objects.get(pk=gate.pk).status == "open"
