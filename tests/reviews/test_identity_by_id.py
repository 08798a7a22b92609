"""Four eyes and separation of duties know a signed-in person by user id, not by username.

Found by review: approvers and the run's starter were compared by username, and renaming an
account keeps its sessions. So a reviewer renamed after approving approved the same two-person
gate again and closed it alone, and a starter renamed after starting a run approved it despite
separation of duties. The reverse held too: an account later given a former approver's or
starter's name was treated as them. API keys (``api:<prefix>``) are still known by name.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import IntegrityError, transaction
from django.test import Client
from django.utils import timezone

from reviews import bulk
from reviews.models import Gate, GateApproval
from reviews.services import (
    ReassignError,
    SeparationOfDutiesError,
    approved_by,
    decide_gate,
    next_gate_for,
    reassign_gate,
)
from tests.reviews.conftest import People
from tests.support import Bell
from workflows import get_run, start, workflow
from workflows.keys import create_api_key

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def logged_in(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def rename(user: User, to: str) -> None:
    """What an admin's rename does: the row changes, the user's sessions stay valid."""
    User.objects.filter(pk=user.pk).update(username=to)


def gate_started_by(bell: Bell, starter: User | None = None, **options: Any) -> Gate:
    """A gate of a run started by ``starter`` as the start form records it: name and id."""
    if starter is None:
        run = start("test.review", options)
    else:
        run = start(
            "test.review",
            options,
            created_by=starter.get_username(),
            created_by_user_id=starter.pk,
        )
    bell.drain()
    return Gate.objects.get(run=run, status="open")


def reviewer(name: str) -> User:
    u = User.objects.create_user(name, password=f"pw-{name}-123")
    u.groups.add(Group.objects.get(name="reviewers"))
    return u


# --- four eyes ---------------------------------------------------------------------------------


def test_a_renamed_first_approver_cannot_approve_a_four_eyes_gate_again(
    bell: Bell, people: People
) -> None:
    """The reviewer's repro: ana approves (1 of 2), is renamed, and approves again from the
    same session. It is refused as already approved; the gate waits for another person."""
    gate = gate_started_by(bell, approvals=2)
    ana = logged_in(people.ana)
    r = ana.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": "ok"})
    assert r.status_code == 302
    rename(people.ana, "ana.smith")
    r = ana.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "comment": "ok again"})
    assert r.status_code == 409
    assert "already approved" in r.content.decode()
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("open", "")
    rows = list(GateApproval.objects.filter(gate=gate).values_list("approver", "user_id"))
    assert rows == [("ana", people.ana.pk)]
    # Another person closes it.
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("decided", "ana, ben")


def test_the_service_counts_a_renamed_approver_once(bell: Bell, people: People) -> None:
    gate = gate_started_by(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    rename(people.ana, "ana.smith")
    people.ana.refresh_from_db()
    again = decide_gate(gate.pk, outcome="approve", actor="ana.smith", user=people.ana)
    assert again.status == "open"
    assert GateApproval.objects.filter(gate=gate).count() == 1


def test_an_approval_recorded_by_name_only_is_the_same_persons(bell: Bell, people: People) -> None:
    """Found by the diff review: code that records ana's approval by name (``decide_gate`` with
    ``actor="ana"`` and no user), then ana on the web: matched by id only, one person closed
    a four-eyes gate (the old unique name constraint had refused it)."""
    gate = gate_started_by(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=None)
    r = logged_in(people.ana).post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"})
    assert r.status_code == 409
    gate.refresh_from_db()
    assert gate.status == "open"
    assert approved_by(gate.pk, actor="ana", user=people.ana)
    assert GateApproval.objects.filter(gate=gate).count() == 1


def test_a_new_account_given_a_deleted_approvers_name_may_approve(
    bell: Bell, people: People
) -> None:
    """Found by the final read: matching name-only approvals by name took a deleted approver's
    approval (its user cleared) for the new account later given their name."""
    gate = gate_started_by(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    people.ana.delete()
    newcomer = reviewer("ana")
    r = logged_in(newcomer).post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"})
    assert r.status_code == 302, r.status_code
    gate.refresh_from_db()
    assert gate.status == "decided"
    # And the next-gate offer agrees with the service about a name-only approval.
    other = gate_started_by(bell, approvals=2)
    decide_gate(other.pk, outcome="approve", actor="ben", user=None)
    assert next_gate_for(people.ben) is None or next_gate_for(people.ben).pk != other.pk


def test_the_panel_bulk_and_next_gate_know_a_renamed_approver(bell: Bell, people: People) -> None:
    gate = gate_started_by(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    rename(people.ana, "ana.smith")
    people.ana.refresh_from_db()
    # The panel offers no second "approve".
    r = logged_in(people.ana).get(f"/reviews/{gate.pk}/")
    assert r.status_code == 200
    assert r.context["approved_by_me"] is True
    assert "approve" not in r.context["my_choices"]
    # Bulk skips it as already approved rather than "approving" it again.
    result = bulk.bulk_decide(people.ana, [gate.pk], outcome="approve")
    assert [s.reason for s in result.skipped] == ["already_approved"]
    # And the next gate after a decision is not this one.
    assert next_gate_for(people.ana) is None
    assert next_gate_for(people.ben) == gate


def test_an_account_given_a_former_approvers_name_is_another_approver(
    bell: Bell, people: People
) -> None:
    gate = gate_started_by(bell, approvals=2)
    ana = logged_in(people.ana)
    assert ana.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"}).status_code == 302
    rename(people.ana, "ana.old")
    new_ana = reviewer("ana")
    r = logged_in(new_ana).get(f"/reviews/{gate.pk}/")
    assert r.context["approved_by_me"] is False and "approve" in r.context["my_choices"]
    r = logged_in(new_ana).post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"})
    assert r.status_code == 302
    gate.refresh_from_db()
    assert gate.status == "decided"
    rows = list(GateApproval.objects.filter(gate=gate).values_list("user_id", flat=True))
    assert rows == [people.ana.pk, new_ana.pk]


def test_reassigning_to_a_renamed_approver_is_refused(bell: Bell, people: People) -> None:
    gate = gate_started_by(bell, approvals=2)
    decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)
    rename(people.ana, "ana.smith")
    with pytest.raises(ReassignError, match="already approved"):
        reassign_gate(gate.pk, people.sam, "ana.smith")


def test_an_api_key_is_still_known_by_its_name(bell: Bell, people: People) -> None:
    gate = gate_started_by(bell, approvals=2)
    key, _ = create_api_key("svc", scopes=("gates:decide",))
    decide_gate(gate.pk, outcome="approve", actor=key.actor)
    again = decide_gate(gate.pk, outcome="approve", actor=key.actor)
    assert again.status == "open"
    assert GateApproval.objects.filter(gate=gate).count() == 1


def test_the_database_allows_one_approval_per_user_and_per_key(bell: Bell, people: People) -> None:
    """The constraints behind the service's check, for requests racing past it."""
    gate = gate_started_by(bell, approvals=3)
    now = timezone.now()
    GateApproval.objects.create(gate=gate, approver="ana", user=people.ana, at=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        GateApproval.objects.create(gate=gate, approver="ana.smith", user=people.ana, at=now)
    GateApproval.objects.create(gate=gate, approver="api:sk_one", at=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        GateApproval.objects.create(gate=gate, approver="api:sk_one", at=now)
    # Two accounts that held one name in turn are two approvers.
    GateApproval.objects.create(gate=gate, approver="ana", user=people.ben, at=now)
    # A deleted approver's row keeps the name and loses the id: deleting two such accounts
    # must not collide.
    olga2 = User.objects.create_user("olga2")
    GateApproval.objects.filter(user=people.ben).update(user=olga2)
    people.ana.delete()
    olga2.delete()
    assert list(GateApproval.objects.filter(gate=gate, approver="ana").values_list("user_id")) == [
        (None,),
        (None,),
    ]


# --- separation of duties ----------------------------------------------------------------------


def test_a_renamed_starter_is_still_barred_from_approving_their_run(
    bell: Bell, people: People
) -> None:
    """The reviewer's repro: refused (403) before the rename, and after it too."""
    gate = gate_started_by(bell, people.ana, separation_of_duties=True)
    ana = logged_in(people.ana)
    assert ana.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"}).status_code == 403
    rename(people.ana, "ana.smith")
    assert ana.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"}).status_code == 403
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("open", "")
    people.ana.refresh_from_db()
    with pytest.raises(SeparationOfDutiesError):
        decide_gate(gate.pk, outcome="approve", actor="ana.smith", user=people.ana)
    r = ana.get(f"/reviews/{gate.pk}/")
    assert r.context["barred_from_approving"] is True
    result = bulk.bulk_decide(people.ana, [gate.pk], outcome="approve")
    assert [s.reason for s in result.skipped] == ["separation_of_duties"]
    with pytest.raises(ReassignError, match="started this run"):
        reassign_gate(gate.pk, people.sam, "ana.smith")


def test_an_account_given_the_starters_former_name_may_approve(bell: Bell, people: People) -> None:
    gate = gate_started_by(bell, people.ana, separation_of_duties=True)
    rename(people.ana, "ana.old")
    new_ana = reviewer("ana")
    r = logged_in(new_ana).get(f"/reviews/{gate.pk}/")
    assert r.context["barred_from_approving"] is False
    r = logged_in(new_ana).post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve"})
    assert r.status_code == 302
    gate.refresh_from_db()
    assert (gate.status, gate.decided_by) == ("decided", "ana")


def test_a_run_without_the_starters_id_is_still_matched_by_name(bell: Bell, people: People) -> None:
    """Runs started before the id was recorded, or from Python by name only."""
    run = start("test.review", {"separation_of_duties": True}, created_by="ana")
    bell.drain()
    gate = Gate.objects.get(run=run)
    assert get_run(run.pk).created_by_user_id is None
    with pytest.raises(SeparationOfDutiesError):
        decide_gate(gate.pk, outcome="approve", actor="ana", user=people.ana)


@workflow(name="test.identity_review_in_a_child")
def review_in_a_child(ctx: Any) -> Any:
    return ctx.run_workflow("test.review", {"separation_of_duties": True})


def test_a_child_run_carries_its_parents_starter_id(bell: Bell, people: People) -> None:
    parent = start(
        "test.identity_review_in_a_child",
        {},
        created_by="ana",
        created_by_user_id=people.ana.pk,
    )
    bell.settle()
    gate = Gate.objects.get()
    assert gate.run.parent_id == parent.pk
    assert gate.run.created_by_user_id == people.ana.pk
    rename(people.ana, "ana.smith")
    with pytest.raises(SeparationOfDutiesError):
        decide_gate(gate.pk, outcome="approve", actor="ana.smith", user=people.ana)
