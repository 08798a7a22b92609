"""A claim whose holder can no longer decide the gate (deactivated, removed from its review
group, moved to another tenant) froze the gate: nobody else of its group could decide it, it
never escalated, its reminder went to nobody, and its deadline advanced it with its default.
The beat now releases such claims (``reviews.claims.release_void_claims``), saying why."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from reviews.claims import release_void_claims
from reviews.models import Gate, GateEvent
from reviews.services import claim_gate, decide_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows.models import TenantMembership

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def deactivate(people: People) -> None:
    people.ana.is_active = False
    people.ana.save()


def leave_group(people: People) -> None:
    people.ana.groups.remove(Group.objects.get(name="reviewers"))


def move_tenant(people: People) -> None:
    TenantMembership.objects.create(user=people.ana, tenant="other-co")


@pytest.mark.parametrize("change", [deactivate, leave_group, move_tenant])
def test_a_claim_its_holder_can_no_longer_use_is_released(
    bell: Bell, people: People, change: Any
) -> None:
    gate = open_gate(bell)
    kept = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    claim_gate(kept.pk, people.ben)  # ben still may: his claim stays
    change(people)
    assert release_void_claims() == 1
    gate.refresh_from_db()
    assert gate.claimed_by_id is None and gate.status == "open"
    assert Gate.objects.get(pk=kept.pk).claimed_by_id == people.ben.pk
    event = GateEvent.objects.filter(gate=gate, kind="released").get()
    assert event.detail["holder"] == "ana" and event.detail["reason"].startswith("ana ")
    # Ben, of the same group, can now decide it.
    decided = decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    assert decided.status == "decided"
    assert release_void_claims() == 0  # idempotent


def test_a_claim_its_holder_still_may_use_is_left_alone(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    assert release_void_claims() == 0
    assert Gate.objects.get(pk=gate.pk).claimed_by_id == people.ana.pk
    assert not GateEvent.objects.filter(gate=gate, kind="released").exists()


def test_the_beat_runs_it(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["sluice-void-claims"]
    assert entry["task"] == "reviews.release_void_claims"
    from reviews import tasks

    assert tasks.release_void_claims.name == entry["task"]
