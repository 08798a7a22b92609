"""Run pages show a web user only the runs of their tenant that are theirs to see.

The rule (``workflows.access``): staff see every run; anyone else a run of their tenant when
they are in a run viewer group, the run has a gate of one of their groups, or they started it.
Outside it a run, its values and its graph are 404; the runs list leaves it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.security.scene import Scene, user

pytestmark = [pytest.mark.django_db]


def login(u: Any) -> Client:
    c = Client()
    c.force_login(u)
    return c


def test_it_hides_another_tenants_run_and_its_values(scene: Scene) -> None:
    # gus reviews alpha, as alice does, but for globex: acme's alpha run is not his.
    gus, alice = login(scene.users["rev_other"]), login(scene.users["rev_a"])
    run_a, blob_a = scene.runs["run_a"], scene.blobs["blob_a"]
    assert gus.get(f"/runs/{run_a.pk}/").status_code == 404
    assert gus.get(f"/runs/{run_a.pk}/values/{blob_a.pk}/").status_code == 404
    assert alice.get(f"/runs/{run_a.pk}/").status_code == 200
    assert alice.get(f"/runs/{run_a.pk}/values/{blob_a.pk}/").json() == {"secret": "acme document"}
    run_g = scene.runs["run_g"]
    assert gus.get(f"/runs/{run_g.pk}/").status_code == 200
    assert alice.get(f"/runs/{run_g.pk}/").status_code == 404


def test_it_shows_a_reviewer_only_runs_with_a_gate_of_their_group(scene: Scene) -> None:
    bob = login(scene.users["rev_b"])  # beta, acme
    assert bob.get(f"/runs/{scene.runs['run_a'].pk}/").status_code == 404  # alpha's gate
    assert bob.get(f"/runs/{scene.runs['run_b'].pk}/").status_code == 200
    html = bob.get("/runs/").content.decode()
    assert str(scene.runs["run_b"].pk)[:8] in html
    for other in ("run_a", "run_g", "run_p"):
        assert str(scene.runs[other].pk)[:8] not in html


def test_the_runs_list_and_its_live_refresh_count_only_visible_runs(scene: Scene) -> None:
    gus = login(scene.users["rev_other"])
    page = gus.get("/runs/")
    assert page.context["total"] == 1 and [r.pk for r in page.context["runs"]] == [
        scene.runs["run_g"].pk
    ]
    rows = gus.get("/runs/?partial=rows", headers={"HX-Request": "true"}).content.decode()
    assert str(scene.runs["run_g"].pk)[:8] in rows
    assert str(scene.runs["run_a"].pk)[:8] not in rows


def test_a_starter_sees_their_run_and_its_graph(scene: Scene) -> None:
    run_p = scene.runs["run_p"]  # started by alice
    alice, bob = login(scene.users["rev_a"]), login(scene.users["rev_b"])
    assert alice.get(f"/runs/{run_p.pk}/").status_code == 200
    assert alice.get(f"/pipelines/runs/{run_p.pk}/graph/").json()["run"] == str(run_p.pk)
    assert bob.get(f"/runs/{run_p.pk}/").status_code == 404
    assert bob.get(f"/pipelines/runs/{run_p.pk}/graph/").status_code == 404


def test_a_viewer_group_sees_every_run_of_its_tenant_only(scene: Scene, settings: Any) -> None:
    settings.SLUICE_RUN_VIEWER_GROUPS = ["auditors"]
    vera = user("vera", tenant="acme", groups=("auditors",))
    c = login(vera)
    for name in ("run_a", "run_b", "run_p"):
        assert c.get(f"/runs/{scene.runs[name].pk}/").status_code == 200, name
    assert c.get(f"/runs/{scene.runs['run_g'].pk}/").status_code == 404
    assert c.get("/runs/").context["total"] == 3


def test_staff_see_every_tenant(scene: Scene) -> None:
    c = login(scene.users["operator"])
    for run in scene.runs.values():
        assert c.get(f"/runs/{run.pk}/").status_code == 200
    assert c.get("/runs/").context["total"] == len(scene.runs)


def test_a_user_who_may_see_no_run_gets_403(scene: Scene) -> None:
    nora = login(scene.users["nogroup"])
    assert nora.get("/runs/").status_code == 403
    assert nora.get(f"/runs/{scene.runs['run_a'].pk}/").status_code == 403
    assert nora.get("/pipelines/").status_code == 403


def test_a_user_without_a_membership_works_for_the_default_tenant(scene: Scene) -> None:
    Group.objects.get_or_create(name="reviewers")
    rita = user("rita", groups=("reviewers",))  # a viewer, of the default tenant ""
    c = login(rita)
    assert c.get(f"/runs/{scene.runs['run_a'].pk}/").status_code == 404
    assert c.get("/runs/").context["total"] == 0


def test_the_viewer_groups_are_read_from_the_environment() -> None:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.SLUICE_RUN_VIEWER_GROUPS)"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SLUICE_RUN_VIEWER_GROUPS": "auditors,ops",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['auditors', 'ops']"
    env.pop("SLUICE_RUN_VIEWER_GROUPS")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['reviewers']"


def test_an_escalation_group_sees_the_run_of_a_gate_escalated_to_it(scene: Scene) -> None:
    """The queue shows an escalated gate to its escalation group; its run page must open too
    (one rule for both: ``Gate.of_groups``), and not before the gate escalated."""
    from django.utils import timezone

    from reviews.models import Gate

    bob = login(scene.users["rev_b"])  # beta, acme
    run_a, gate_a = scene.runs["run_a"], scene.gates["gate_a"]  # alpha's gate, acme
    Gate.objects.filter(pk=gate_a.pk).update(escalate_to="beta")
    assert bob.get(f"/runs/{run_a.pk}/").status_code == 404  # not escalated yet
    Gate.objects.filter(pk=gate_a.pk).update(escalated_at=timezone.now())
    assert bob.get(f"/reviews/{gate_a.pk}/").status_code == 200
    assert bob.get(f"/runs/{run_a.pk}/").status_code == 200
    assert str(run_a.pk)[:8] in bob.get("/runs/").content.decode()


def test_an_operator_acts_only_on_runs_they_may_see(scene: Scene) -> None:
    """Staff with workflows.change_run but not view_run do not see every tenant's runs, so
    they may not cancel one either: 404, and the run goes on."""
    from tests.security.scene import grant

    clerk = grant(user("carl", tenant="acme", is_staff=True), "workflows.change_run")
    run_g = scene.runs["run_g"]  # globex
    response = login(clerk).post(f"/runs/{run_g.pk}/actions/cancel/")
    assert response.status_code == 404
    run_g.refresh_from_db()
    assert run_g.status == "suspended"


def test_change_rights_alone_neither_show_nor_act_on_other_tenants_runs_in_admin(
    scene: Scene,
) -> None:
    """``change_run`` is the right to act on runs the user may see; the admin acts on every
    tenant's runs, so it also needs ``view_run`` (review finding: it showed and canceled
    globex's run to an acme operator holding only ``change_run``)."""
    from tests.security.scene import grant
    from workflows.models import Run

    chris = login(grant(user("chris", tenant="acme", is_staff=True), "workflows.change_run"))
    run_g = scene.runs["run_g"]
    assert chris.get("/admin/workflows/run/").status_code == 403
    assert chris.get(f"/admin/workflows/run/{run_g.pk}/change/").status_code == 403
    r = chris.post(
        "/admin/workflows/run/",
        {"action": "cancel_runs", "_selected_action": [str(run_g.pk)], "reason": "x"},
    )
    assert r.status_code == 403
    assert Run.objects.get(pk=run_g.pk).status == run_g.status
    # with view_run too, the operator sees and acts on every run, as on the run pages
    olga = login(
        grant(
            user("olga", tenant="acme", is_staff=True),
            "workflows.change_run",
            "workflows.view_run",
        )
    )
    assert olga.get("/admin/workflows/run/").status_code == 200
    assert olga.get(f"/admin/workflows/run/{run_g.pk}/change/").status_code == 200


def test_gate_change_rights_alone_neither_show_nor_free_other_tenants_gates(
    scene: Scene,
) -> None:
    from reviews.models import Gate
    from reviews.services import claim_gate
    from tests.security.scene import grant

    gate_g = scene.gates["gate_g"]
    claim_gate(gate_g.pk, scene.users["rev_other"])
    gina = login(grant(user("gina", tenant="acme", is_staff=True), "reviews.change_gate"))
    assert gina.get("/admin/reviews/gate/").status_code == 403
    assert gina.get(f"/admin/reviews/gate/{gate_g.pk}/change/").status_code == 403
    r = gina.post(
        "/admin/reviews/gate/",
        {"action": "release_claims", "_selected_action": [str(gate_g.pk)]},
    )
    assert r.status_code == 403
    assert Gate.objects.get(pk=gate_g.pk).claimed_by == scene.users["rev_other"]
