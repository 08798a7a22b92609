"""The review queue, gate pages and "My decisions" are scoped to the reviewer's groups AND
tenant: a gate of one's own group on another tenant's run is 404, as another group's gate is."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from reviews import services
from tests.security.scene import Scene

pytestmark = [pytest.mark.django_db]


def login(u: Any) -> Client:
    c = Client()
    c.force_login(u)
    return c


def test_the_queue_lists_only_gates_of_the_reviewers_tenant(scene: Scene) -> None:
    alice, gus = login(scene.users["rev_a"]), login(scene.users["rev_other"])
    assert [g.pk for g in alice.get("/reviews/").context["gates"]] == [scene.gates["gate_a"].pk]
    assert [g.pk for g in gus.get("/reviews/").context["gates"]] == [scene.gates["gate_g"].pk]


def test_another_tenants_gate_of_the_same_group_is_404(scene: Scene) -> None:
    gus = login(scene.users["rev_other"])  # alpha, globex
    gate_a = scene.gates["gate_a"]  # alpha, acme
    assert gus.get(f"/reviews/{gate_a.pk}/").status_code == 404
    assert gus.get(f"/reviews/{gate_a.pk}/status/").status_code == 404
    for action in ("claim", "release", "decide"):
        response = gus.post(f"/reviews/{gate_a.pk}/{action}/", {"outcome": "approve"})
        assert response.status_code == 404, action
    gate_a.refresh_from_db()
    assert gate_a.status == "open" and gate_a.claimed_by_id is None


def test_my_decisions_hide_gates_outside_the_reviewers_scope(scene: Scene) -> None:
    alice = scene.users["rev_a"]
    gate_a = scene.gates["gate_a"]
    services.decide_gate(gate_a.pk, outcome="approve", comment="ok", actor="alice", user=alice)
    c = login(alice)
    assert [g.pk for g in c.get("/reviews/mine/").context["page"].object_list] == [gate_a.pk]
    # alice moves to globex: her acme decision (and its payload) is no longer hers to see.
    alice.tenant_membership.tenant = "globex"
    alice.tenant_membership.save()
    assert list(login(alice).get("/reviews/mine/").context["page"].object_list) == []
