"""Starting a run from the web needs the ``workflows.start_run`` permission; a run started
there carries the user's tenant and username. The demo reviewer holds the permission."""

from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from tests.security.scene import Scene, grant
from workflows.models import Run, TenantMembership

pytestmark = [pytest.mark.django_db]

START = "/pipelines/thread_analysis/start/"
FORM = {"input.title": "Hi", "input.thread": "Ann: hello\nBo: hi"}


def csrf_client(u: Any) -> tuple[Client, str]:
    c = Client(enforce_csrf_checks=True)
    c.force_login(u)
    c.get("/accounts/login/")
    return c, c.cookies["csrftoken"].value


def test_a_user_without_the_permission_gets_403_and_starts_nothing(scene: Scene) -> None:
    for persona in ("nogroup", "rev_a"):
        c, token = csrf_client(scene.users[persona])
        response = c.post(START, {**FORM, "csrfmiddlewaretoken": token})
        assert response.status_code == 403, persona
        assert c.get(START).status_code == 403
    assert not Run.objects.filter(workflow="thread_analysis").exists()


def test_a_reviewer_without_the_permission_sees_no_start_buttons(scene: Scene) -> None:
    c = Client()
    c.force_login(scene.users["rev_a"])
    html = c.get("/pipelines/").content.decode()
    assert "/start/" not in html and "Can start runs from the web" in html
    c.force_login(scene.users["operator"])
    assert 'href="/pipelines/thread_analysis/start/"' in c.get("/pipelines/").content.decode()


def test_a_run_started_from_the_web_gets_the_users_tenant_and_name(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)
    alice = grant(scene.users["rev_a"], "workflows.start_run")
    c, token = csrf_client(User.objects.get(pk=alice.pk))
    html = c.get(START).content.decode()
    form_key = re.search(r'name="form_key" value="([0-9a-f]{32})"', html)
    assert form_key
    data = {**FORM, "form_key": form_key.group(1), "csrfmiddlewaretoken": token}
    response = c.post(START, data)
    assert response.status_code == 302
    run = Run.objects.get(workflow="thread_analysis")
    assert (run.tenant, run.created_by) == ("acme", "alice")
    assert c.get(response["Location"]).status_code == 200  # the starter sees it


def test_the_demo_reviewer_may_start_runs_and_see_the_demo_runs(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)
    call_command("seed_demo", stdout=StringIO())
    reviewer = User.objects.get(username="reviewer")
    assert reviewer.has_perm("workflows.start_run")
    c = Client()
    c.force_login(reviewer)
    assert c.get(START).status_code == 200
    assert c.get("/runs/").context["total"] == Run.objects.count() == 4
    # Seeding again repairs it, even after someone moved the reviewer to another tenant.
    TenantMembership.objects.create(user=reviewer, tenant="acme")
    call_command("seed_demo", "--no-runs", stdout=StringIO())
    c.force_login(User.objects.get(username="reviewer"))
    assert c.get("/runs/").context["total"] == 4
