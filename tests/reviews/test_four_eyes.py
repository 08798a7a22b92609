"""Multi-approver gates (four eyes): ``ctx.review(..., approvals=2, separation_of_duties=True)``.

Two distinct approvers close the gate with "approve"; one rejection closes it at once; the same
approver twice counts once; whoever started the run may not approve it. Each approval is in the
audit trail; the panel and the API show the approvals so far. The races are in test_races.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from reviews.models import Gate, GateApproval, GateEvent
from reviews.services import (
    GateClaimedError,
    SeparationOfDutiesError,
    claim_gate,
    decide_gate,
    expire_due_gates,
)
from tests.reviews.conftest import People, open_gate
from tests.reviews.workflows import SENTIMENT_FIELDS
from tests.support import Bell
from workflows import get_run, start, workflow
from workflows.keys import create_api_key
from workflows.models import Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def kinds(gate: Gate) -> list[str]:
    return list(GateEvent.objects.filter(gate=gate).values_list("kind", flat=True))


def logged_in(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


# --- the service -------------------------------------------------------------------------------


def test_it_stays_open_after_one_of_two_approvals(bell: Bell, people: People) -> None:
    gate = open_gate(bell, approvals=2)
    assert gate.approvals_required == 2
    decide_gate(gate.pk, outcome="approve", comment="looks right", actor="ana", user=people.ana)
    gate.refresh_from_db()
    assert gate.status == "open" and gate.outcome == ""
    assert Step.objects.get(pk=gate.step_id).status == "waiting"
    bell.drain()
    assert get_run(gate.run_id).status == "suspended"
    assert kinds(gate) == ["opened", "approved"]
    event = GateEvent.objects.get(gate=gate, kind="approved")
    assert event.actor == "ana"
    assert event.detail == {"count": 1, "required": 2, "comment": "looks right"}


def test_it_closes_with_the_second_distinct_approver(bell: Bell, people: People) -> None:
    gate = open_gate(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    decide_gate(gate.pk, outcome="approve", comment="agreed", actor="ben", user=people.ben)
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.decided_by) == ("decided", "approve", "ana, ben")
    assert kinds(gate) == ["opened", "approved", "decided"]
    assert GateEvent.objects.get(gate=gate, kind="decided").detail["approvals"] == ["ana", "ben"]
    bell.drain()
    output = get_run(gate.run_id).output
    assert output["outcome"] == "approve"
    assert output["approvals"] == ["ana", "ben"]
    assert output["decided_by"] == "ana, ben"


def test_the_same_approver_twice_counts_once(bell: Bell, people: People) -> None:
    gate = open_gate(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    again = decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    assert again.status == "open"
    assert list(GateApproval.objects.filter(gate=gate).values_list("approver", flat=True)) == [
        "ana"
    ]
    assert kinds(gate) == ["opened", "approved"]


def test_one_rejection_rejects_even_after_an_approval(bell: Bell, people: People) -> None:
    gate = open_gate(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    decide_gate(
        gate.pk, outcome="reject", comment="clause 9 is wrong", actor="ben", user=people.ben
    )
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.decided_by) == ("decided", "reject", "ben")
    bell.drain()
    assert get_run(gate.run_id).output["outcome"] == "reject"


def test_an_approval_releases_the_approvers_claim_for_the_next_one(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, approvals=2)
    claim_gate(gate.pk, people.ana)
    with pytest.raises(GateClaimedError):
        decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    gate.refresh_from_db()
    assert gate.claimed_by is None
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    gate.refresh_from_db()
    assert gate.status == "decided"


def test_separation_of_duties_bars_the_user_who_started_the_run(bell: Bell, people: People) -> None:
    gate = open_gate(bell, created_by="ana", approvals=2, separation_of_duties=True)
    with pytest.raises(SeparationOfDutiesError, match="ana started this run"):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    assert not GateApproval.objects.filter(gate=gate).exists()
    assert kinds(gate) == ["opened"]
    # Rejecting their own run stays allowed: the rule only stops waving one's own work through.
    decide_gate(gate.pk, outcome="reject", actor="ana", user=people.ana)
    gate.refresh_from_db()
    assert (gate.status, gate.outcome) == ("decided", "reject")


def test_separation_of_duties_applies_to_a_single_approver_gate_and_to_staff(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, created_by="sam", separation_of_duties=True)
    with pytest.raises(SeparationOfDutiesError):
        decide_gate(gate.pk, outcome="approve", actor="sam", user=people.sam)
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("decided", "ben")


@workflow(name="test.review_in_a_child")
def review_in_a_child(ctx: Any) -> Any:
    return ctx.run_workflow("test.review", {"separation_of_duties": True})


def test_separation_of_duties_holds_for_a_gate_in_a_child_run(bell: Bell, people: People) -> None:
    """Who started the parent started the child's work: the child run carries the parent's
    ``created_by`` (review finding: it was empty, so the starter could approve the child's
    gate)."""
    parent = start("test.review_in_a_child", {}, created_by="ana")
    bell.settle()
    gate = Gate.objects.get()
    assert gate.run.parent_id == parent.pk and gate.run.created_by == "ana"
    with pytest.raises(SeparationOfDutiesError, match="ana started this run"):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    bell.settle()
    assert get_run(parent.pk).status == "succeeded"


def test_without_separation_of_duties_the_starter_may_approve(bell: Bell, people: People) -> None:
    gate = open_gate(bell, created_by="ana")
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    gate.refresh_from_db()
    assert gate.status == "decided"


def test_expiry_with_partial_approvals_advances_with_the_default_and_records_them(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, approvals=3, on_timeout="reject")
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    assert expire_due_gates() == 1
    gate.refresh_from_db()
    assert (gate.status, gate.outcome, gate.timed_out) == ("expired", "reject", True)
    expired = GateEvent.objects.get(gate=gate, kind="expired")
    assert expired.detail == {"outcome": "reject", "approvals": ["ana", "ben"]}
    assert GateApproval.objects.filter(gate=gate).count() == 2
    bell.drain()
    assert get_run(gate.run_id).output["outcome"] == "reject"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"approvals": 0}, "approvals must be a whole number"),
        ({"approvals": 11}, "approvals must be a whole number"),
        ({"approvals": 2, "choices": ["yes", "no"], "on_timeout": "yes"}, "needs 'approve'"),
        ({"escalate_after_s": 60}, "go together"),
        ({"escalate_to": "leads"}, "go together"),
        ({"escalate_after_s": 60, "escalate_to": "reviewers"}, "own group"),
    ],
)
def test_it_fails_the_run_on_bad_four_eyes_or_escalation_options(
    bell: Bell, options: dict[str, Any], message: str
) -> None:
    run = start("test.review", options)
    bell.drain()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert message in run.error["message"]
    assert not Gate.objects.filter(run=run).exists()


# --- the panel ---------------------------------------------------------------------------------


def test_the_panel_shows_1_of_2_approvals_and_who_gave_them(bell: Bell, people: People) -> None:
    gate = open_gate(bell, approvals=2)
    page = logged_in(people.ben).get(f"/reviews/{gate.pk}/").content.decode()
    assert "0 of 2 approvals" in page
    response = logged_in(people.ana).post(
        f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": "fine"}
    )
    assert response.status_code == 302 and response["Location"] == f"/reviews/{gate.pk}/"
    ana_page = logged_in(people.ana).get(f"/reviews/{gate.pk}/").content.decode()
    assert "1 of 2 approvals" in ana_page
    assert 'data-testid="approver">ana<' in ana_page
    assert 'data-testid="approved-by-me"' in ana_page
    # ana has approved: her panel offers only the rejection.
    assert 'value="approve"' not in ana_page and 'value="reject"' in ana_page
    ben_page = logged_in(people.ben).get(f"/reviews/{gate.pk}/").content.decode()
    assert "1 of 2 approvals" in ben_page and 'value="approve"' in ben_page
    logged_in(people.ben).post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"})
    done = logged_in(people.ben).get(f"/reviews/{gate.pk}/").content.decode()
    assert "2 of 2 approvals" in done and "ana, ben" in done


def test_the_panel_refuses_the_starters_approval_with_a_clear_error(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, created_by="ana", separation_of_duties=True)
    page = logged_in(people.ana).get(f"/reviews/{gate.pk}/").content.decode()
    assert 'data-testid="separation-note"' in page and 'value="approve"' not in page
    # A forged or stale form still gets a clear refusal, never a decision.
    response = logged_in(people.ana).post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"})
    assert response.status_code == 403
    assert "Separation of duties: ana started this run" in response.content.decode()
    gate.refresh_from_db()
    assert gate.status == "open"


# --- the API -----------------------------------------------------------------------------------


def test_the_api_shows_approvals_and_refuses_the_starting_key(bell: Bell, people: People) -> None:
    starter, starter_raw = create_api_key("ci", scopes=["runs:write", "gates:decide"])
    other, other_raw = create_api_key("lead-bot", scopes=["gates:decide"])
    run = start(
        "test.review",
        {"approvals": 2, "separation_of_duties": True},
        created_by=starter.actor,
    )
    bell.drain()
    gate = Gate.objects.get(run=run)
    c = Client()
    url = f"/api/gates/{gate.pk}/decision"
    refused = c.post(
        url,
        {"outcome": "approve"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {starter_raw}",
    )
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "forbidden" and "started this run" in error["message"]
    one = c.post(
        url,
        {"outcome": "approve"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {other_raw}",
    )
    assert one.status_code == 200
    body = one.json()
    assert body["status"] == "open" and body["approvals_required"] == 2
    assert [a["by"] for a in body["approvals"]] == [other.actor]
    listed = c.get("/api/gates", HTTP_AUTHORIZATION=f"Bearer {other_raw}").json()
    assert [a["by"] for a in listed[0]["approvals"]] == [other.actor]
    assert listed[0]["separation_of_duties"] is True
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    gate.refresh_from_db()
    assert gate.decided_by == f"{other.actor}, ben"


def test_after_deciding_it_does_not_send_an_approver_back_to_a_gate_they_approved(
    bell: Bell, people: People
) -> None:
    approved = open_gate(bell, approvals=2, title="Approved already", timeout_s=600)
    decide_gate(approved.pk, outcome="approve", actor="ana", user=people.ana)
    current = open_gate(bell, title="The one in hand", timeout_s=3600)
    response = logged_in(people.ana).post(f"/reviews/{current.pk}/decide/", {"outcome": "approve"})
    # The only other open gate is one ana approved: the queue is empty for her.
    assert response.status_code == 302 and response["Location"] == "/reviews/"
    later = open_gate(bell, title="Still to do", timeout_s=7200)
    again = open_gate(bell, title="Next", timeout_s=3000)
    response = logged_in(people.ana).post(f"/reviews/{again.pk}/decide/", {"outcome": "approve"})
    assert response["Location"] == f"/reviews/{later.pk}/"


def test_each_approvals_edits_are_audited_and_the_closing_ones_decide(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, approvals=2, fields=SENTIMENT_FIELDS)
    first = {"sentiment": "neutral", "score": 0.5}
    decide_gate(gate.pk, outcome="approve", edits=first, actor="ana", user=people.ana)
    audited = GateEvent.objects.get(gate=gate, kind="approved").detail["edits"]
    assert (audited["sentiment"], audited["score"]) == ("neutral", 0.5)
    last = {"sentiment": "negative", "score": 0.2}
    decide_gate(gate.pk, outcome="approve", edits=last, actor="ben", user=people.ben)
    bell.drain()
    edits = get_run(gate.run_id).output["edits"]
    assert (edits["sentiment"], edits["score"]) == ("negative", 0.2)
