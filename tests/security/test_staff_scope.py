"""The staff flag alone does not show every tenant: operators are staff WITH the permission.

Before, ``is_staff`` with no permission at all saw every run and gate of every tenant and could
decide them (``workflows.access``, ``reviews.services.gates_visible_to``). Now every run needs
staff + ``workflows.view_run``, every gate staff + ``reviews.view_gate``, overriding another
reviewer's claim staff + ``reviews.change_gate``; staff without them fall back to the rule of
everyone else (tenant, groups, runs they started).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from reviews.models import Gate
from reviews.services import (
    GateClaimedError,
    claim_gate,
    decide_gate,
    gates_visible_to,
    release_gate,
)
from tests.security.scene import Scene, grant, user
from workflows.access import can_view_run, visible_runs

pytestmark = [pytest.mark.django_db]


def login(u: Any) -> Client:
    c = Client()
    c.force_login(u)
    return c


def test_staff_without_permissions_see_no_run_or_gate_of_any_tenant(scene: Scene) -> None:
    bare = user("bea", is_staff=True)  # no group, no tenant, no permission
    assert not visible_runs(bare).exists()
    assert not gates_visible_to(bare).exists()
    assert not any(can_view_run(bare, run) for run in scene.runs.values())
    c = login(bare)
    nav = c.get("/runs/").content.decode()  # the styled 403 page, with the site's menu
    assert 'href="/admin/"' in nav and 'href="/ops/"' not in nav
    assert c.get("/runs/").status_code == 403
    assert c.get(f"/runs/{scene.runs['run_g'].pk}/").status_code == 403
    assert c.get("/reviews/").status_code == 403
    assert c.get(f"/reviews/{scene.gates['gate_g'].pk}/").status_code == 403
    assert (
        c.post(f"/reviews/{scene.gates['gate_g'].pk}/decide/", {"outcome": "approve"}).status_code
        == 403
    )
    assert c.get("/ops/").status_code == 403
    assert Gate.objects.get(pk=scene.gates["gate_g"].pk).status == "open"


def test_staff_without_permissions_who_review_see_what_the_reviewer_rule_gives(
    scene: Scene,
) -> None:
    stan = scene.users["staff_rev"]  # staff, alpha, acme
    assert set(visible_runs(stan)) == {scene.runs["run_a"]}
    assert set(gates_visible_to(stan)) == {scene.gates["gate_a"]}
    c = login(stan)
    assert c.get(f"/runs/{scene.runs['run_g'].pk}/").status_code == 404
    gate_g = scene.gates["gate_g"]
    assert c.post(f"/reviews/{gate_g.pk}/decide/", {"outcome": "approve"}).status_code == 404
    assert Gate.objects.get(pk=gate_g.pk).status == "open"


def test_operators_with_the_view_permissions_still_see_every_tenant(scene: Scene) -> None:
    runs_only = grant(user("rex", is_staff=True), "workflows.view_run")
    assert set(visible_runs(runs_only)) == set(scene.runs.values())
    assert not gates_visible_to(runs_only).exists()
    ops = login(runs_only).get("/ops/")
    assert ops.status_code == 200 and 'href="/ops/"' in ops.content.decode()
    gates_only = grant(user("gwen", is_staff=True), "reviews.view_gate")
    assert set(gates_visible_to(gates_only)) == set(scene.gates.values())
    # Not staff, the same permission: the staff flag and the permission go together.
    not_staff = grant(user("nat", tenant="acme"), "workflows.view_run", "reviews.view_gate")
    assert not visible_runs(not_staff).exists()
    assert not gates_visible_to(not_staff).exists()


def test_overriding_a_claim_needs_the_gate_change_permission(scene: Scene) -> None:
    gate = scene.gates["gate_a"]
    claim_gate(gate.pk, scene.users["rev_a"])
    viewer = grant(user("gwen", is_staff=True), "reviews.view_gate")
    with pytest.raises(GateClaimedError):  # not theirs to free
        release_gate(gate.pk, viewer)
    assert Gate.objects.get(pk=gate.pk).claimed_by == scene.users["rev_a"]
    with pytest.raises(GateClaimedError):
        decide_gate(gate.pk, outcome="approve", actor="gwen", user=viewer)
    changer = grant(user("cara", is_staff=True), "reviews.view_gate", "reviews.change_gate")
    release_gate(gate.pk, changer)
    assert Gate.objects.get(pk=gate.pk).claimed_by is None
