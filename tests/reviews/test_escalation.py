"""Escalation and reassigning: ``ctx.review(..., escalate_after=..., escalate_to="leads")``.

A gate still unclaimed at ``escalate_at`` (a deadline column) is escalated by the expiry sweep:
from then on the members of the escalation group see it too, on runs of their own tenant only.
A claimant, a member of the escalation group or staff can hand the gate to a named reviewer.
Both are audited. Deadlines are tested by writing past timestamps, not by sleeping.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from pipelines.machine import final, human, machine, unregister
from reviews.models import Gate, GateEvent
from reviews.services import (
    GateClaimedError,
    ReassignError,
    claim_gate,
    decide_gate,
    escalate_due_gates,
    gates_visible_to,
    reassign_gate,
)
from reviews.tasks import expire_gates
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import get_run, start
from workflows.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def escalating(bell: Bell, **input: Any) -> Gate:
    return open_gate(bell, escalate_after_s=12 * 3600, escalate_to="leads", **input)


def due(gate: Gate) -> None:
    Gate.objects.filter(pk=gate.pk).update(escalate_at=timezone.now() - timedelta(seconds=1))


def logged_in(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


# --- escalation --------------------------------------------------------------------------------


def test_it_records_when_and_to_whom_a_gate_escalates(bell: Bell) -> None:
    before = timezone.now()
    gate = escalating(bell)
    assert gate.escalate_to == "leads" and gate.escalated_at is None
    assert before + timedelta(hours=11, minutes=59) < gate.escalate_at
    assert gate.escalate_at < timezone.now() + timedelta(hours=12, minutes=1)
    opened = GateEvent.objects.get(gate=gate, kind="opened")
    assert opened.detail["escalate_to"] == "leads"


def test_the_escalation_group_sees_the_gate_only_once_it_escalated(
    bell: Bell, people: People
) -> None:
    gate = escalating(bell)
    assert not gates_visible_to(people.lea).filter(pk=gate.pk).exists()
    assert logged_in(people.lea).get(f"/reviews/{gate.pk}/").status_code == 404
    assert escalate_due_gates() == 0  # not due yet
    due(gate)
    assert escalate_due_gates() == 1
    gate.refresh_from_db()
    assert gate.escalated_at is not None
    assert gates_visible_to(people.lea).filter(pk=gate.pk).exists()
    page = logged_in(people.lea).get(f"/reviews/{gate.pk}/")
    assert page.status_code == 200 and 'data-testid="escalated-badge"' in page.content.decode()
    assert f'href="/reviews/{gate.pk}/"' in logged_in(people.lea).get("/reviews/").content.decode()
    # The original group still sees it; a reviewer of a third group still does not.
    assert gates_visible_to(people.ana).filter(pk=gate.pk).exists()
    assert not gates_visible_to(people.olga).filter(pk=gate.pk).exists()
    event = GateEvent.objects.get(gate=gate, kind="escalated")
    assert (event.actor, event.detail) == ("", {"to": "leads"})
    # lea may decide it now.
    decide_gate(gate.pk, outcome="approve", actor="lea", user=people.lea)
    bell.drain()
    assert get_run(gate.run_id).output["decided_by"] == "lea"


def test_escalation_is_idempotent(bell: Bell) -> None:
    gate = escalating(bell)
    due(gate)
    assert escalate_due_gates() == 1
    first = Gate.objects.get(pk=gate.pk).escalated_at
    assert escalate_due_gates() == 0
    assert Gate.objects.get(pk=gate.pk).escalated_at == first
    assert GateEvent.objects.filter(gate=gate, kind="escalated").count() == 1


def test_a_claimed_gate_does_not_escalate_until_released(bell: Bell, people: People) -> None:
    gate = escalating(bell)
    claim_gate(gate.pk, people.ana)
    due(gate)
    assert escalate_due_gates() == 0
    Gate.objects.filter(pk=gate.pk).update(claimed_by=None, claimed_at=None)
    assert escalate_due_gates() == 1


def test_a_gate_without_escalation_never_escalates(bell: Bell) -> None:
    gate = open_gate(bell)
    assert gate.escalate_at is None
    assert escalate_due_gates(now=timezone.now() + timedelta(days=60)) == 0


def test_escalation_keeps_the_tenant_rule(bell: Bell, people: People) -> None:
    run = start(
        "test.review",
        {"escalate_after_s": 60, "escalate_to": "leads"},
        tenant="globex",
    )
    bell.drain()
    gate = Gate.objects.get(run=run)
    due(gate)
    assert escalate_due_gates() == 1
    # lea has no tenant of globex: the escalation group widens the group, never the tenant.
    assert not gates_visible_to(people.lea).filter(pk=gate.pk).exists()


def test_the_beat_sweep_escalates_and_expires(bell: Bell) -> None:
    gate = escalating(bell)
    other = open_gate(bell)
    due(gate)
    Gate.objects.filter(pk=other.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    assert expire_gates() == 1
    gate.refresh_from_db()
    assert gate.escalated_at is not None and gate.status == "open"
    assert Gate.objects.get(pk=other.pk).status == "expired"


def test_the_human_state_accepts_the_same_options(bell: Bell, people: People) -> None:
    machine(
        id="test_machine.four_eyes",
        initial="check",
        states={
            "check": human(
                instruction="Two of you, please.",
                on={"approve": "done", "reject": "done"},
                approvals=2,
                separation_of_duties=True,
                escalate_after="12h",
                escalate_to="leads",
            ),
            "done": final(),
        },
    )
    try:
        run = start("test_machine.four_eyes", {}, created_by="ana")
        bell.settle()
        gate = Gate.objects.get(run=run)
        assert (gate.approvals_required, gate.separation_of_duties) == (2, True)
        assert gate.escalate_to == "leads" and gate.escalate_at is not None
        decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
        decide_gate(gate.pk, outcome="approve", actor="sam", user=people.sam)
        bell.settle()
        run = Run.objects.get(pk=run.pk)
        assert run.status == "succeeded"
        assert run.output["context"]["review"]["decided_by"] == "ben, sam"
    finally:
        unregister("test_machine.four_eyes")


def test_a_human_state_with_half_an_escalation_is_rejected() -> None:
    with pytest.raises(Exception, match="escalate_after and escalate_to go together"):
        machine(
            id="test_machine.half_escalation",
            initial="check",
            states={
                "check": human(instruction="?", on={"approve": "done"}, escalate_to="leads"),
                "done": final(),
            },
        )


# --- reassigning -------------------------------------------------------------------------------


def test_the_claimant_hands_the_gate_to_a_named_reviewer(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    reassign_gate(gate.pk, people.ana, "ben")
    gate.refresh_from_db()
    assert gate.claimed_by == people.ben
    event = GateEvent.objects.get(gate=gate, kind="reassigned")
    assert (event.actor, event.detail) == ("ana", {"from": "ana", "to": "ben"})
    # ben holds it now, so ana can no longer decide; ben can.
    with pytest.raises(GateClaimedError):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)


def test_a_reviewer_who_does_not_hold_the_gate_cannot_reassign_it(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    with pytest.raises(GateClaimedError, match="only the reviewer who claimed"):
        reassign_gate(gate.pk, people.ben, "ana")
    claim_gate(gate.pk, people.ana)
    with pytest.raises(GateClaimedError):
        reassign_gate(gate.pk, people.ben, "ben")
    assert not GateEvent.objects.filter(gate=gate, kind="reassigned").exists()


def test_it_hands_a_gate_only_to_someone_who_can_see_it(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    for name in ("olga", "otto", "lea", "nobody", ""):
        with pytest.raises(ReassignError, match="not a reviewer who can see this gate"):
            reassign_gate(gate.pk, people.ana, name)
    gate.refresh_from_db()
    assert gate.claimed_by == people.ana


def test_it_hands_a_gate_only_to_someone_who_may_approve_it(bell: Bell, people: People) -> None:
    """Holding the claim, a four-eyes approver who already approved (or the run's starter on a
    gate with separation of duties) could not approve, and would keep everyone else out."""
    four_eyes = open_gate(bell, approvals=2)
    decide_gate(four_eyes.pk, outcome="approve", actor="ana", user=people.ana)
    claim_gate(four_eyes.pk, people.ben)
    with pytest.raises(ReassignError, match="ana has already approved this gate"):
        reassign_gate(four_eyes.pk, people.ben, "ana")
    own = open_gate(bell, created_by="ana", separation_of_duties=True)
    claim_gate(own.pk, people.ben)
    with pytest.raises(ReassignError, match="ana started this run"):
        reassign_gate(own.pk, people.ben, "ana")
    for gate in (four_eyes, own):
        gate.refresh_from_db()
        assert gate.claimed_by == people.ben
        assert not GateEvent.objects.filter(gate=gate, kind="reassigned").exists()
    # Someone who may approve it still can be handed such a gate.
    theirs = open_gate(bell, created_by="otto", separation_of_duties=True)
    claim_gate(theirs.pk, people.ben)
    reassign_gate(theirs.pk, people.ben, "ana")
    theirs.refresh_from_db()
    assert theirs.claimed_by == people.ana


def test_a_nul_in_the_name_is_nobody(bell: Bell, people: People) -> None:
    """Not a 500 (PostgreSQL refuses a NUL in a query's text): nobody is called that."""
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    with pytest.raises(ReassignError, match="not a reviewer who can see this gate"):
        reassign_gate(gate.pk, people.ana, "b\x00en")
    response = logged_in(people.ana).post(f"/reviews/{gate.pk}/reassign/", {"to": "b\x00en"})
    assert response.status_code == 302
    gate.refresh_from_db()
    assert gate.claimed_by == people.ana


def test_the_escalation_group_can_reassign_an_escalated_gate(bell: Bell, people: People) -> None:
    gate = escalating(bell)
    due(gate)
    escalate_due_gates()
    reassign_gate(gate.pk, people.lea, "ben")
    gate.refresh_from_db()
    assert gate.claimed_by == people.ben
    assert GateEvent.objects.get(gate=gate, kind="reassigned").detail == {
        "from": "",
        "to": "ben",
    }


def test_the_gate_page_has_a_reassign_form_for_the_claimant(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    ben = logged_in(people.ben)
    assert 'data-testid="reassign-form"' not in ben.get(f"/reviews/{gate.pk}/").content.decode()
    assert ben.post(f"/reviews/{gate.pk}/reassign/", {"to": "ben"}).status_code == 403
    claim_gate(gate.pk, people.ana)
    ana = logged_in(people.ana)
    assert 'data-testid="reassign-form"' in ana.get(f"/reviews/{gate.pk}/").content.decode()
    bad = ana.post(f"/reviews/{gate.pk}/reassign/", {"to": "olga"}, follow=True)
    assert "Olga is not a reviewer who can see this gate" in bad.content.decode()
    response = ana.post(f"/reviews/{gate.pk}/reassign/", {"to": "ben"})
    assert response.status_code == 302 and response["Location"] == f"/reviews/{gate.pk}/"
    gate.refresh_from_db()
    assert gate.claimed_by == people.ben
    page = ben.get(f"/reviews/{gate.pk}/").content.decode()
    assert "handed it" in page and "to <bdi>ben</bdi>" in page
    # ana's second tab still shows the form: its post gets the gate's page saying why, not a
    # bare 403 page, and changes nothing
    stale = ana.post(f"/reviews/{gate.pk}/reassign/", {"to": "olga"})
    assert stale.status_code == 403
    assert "ben holds this gate now." in stale.content.decode()
    assert 'data-testid="gate-title"' in stale.content.decode()
    gate.refresh_from_db()
    assert gate.claimed_by == people.ben
