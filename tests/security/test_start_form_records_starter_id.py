"""The start form records the starter's user id (``Run.created_by_user_id``): a new account
given the starter's former name does not see the run (review finding rv_acct #3)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User

from tests.security.scene import Scene, grant, user
from tests.security.test_start_permission import FORM, START, csrf_client
from workflows.models import Run

pytestmark = [pytest.mark.django_db]


def test_a_run_started_from_the_web_records_the_starters_id(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)
    alice = grant(scene.users["rev_a"], "workflows.start_run")
    c, token = csrf_client(User.objects.get(pk=alice.pk))
    form_key = re.search(r'name="form_key" value="([0-9a-f]{32})"', c.get(START).content.decode())
    assert form_key
    response = c.post(START, {**FORM, "form_key": form_key.group(1), "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    run = Run.objects.get(workflow="thread_analysis")
    assert (run.created_by, run.created_by_user_id) == ("alice", alice.pk)
    User.objects.filter(pk=alice.pk).update(username="alice.old")
    newbie = grant(user("alice", tenant="acme"), "workflows.start_run")
    c2, _ = csrf_client(newbie)
    assert c2.get(f"/runs/{run.pk}/").status_code == 404
    assert c.get(f"/runs/{run.pk}/").status_code == 200  # the renamed starter still sees it
