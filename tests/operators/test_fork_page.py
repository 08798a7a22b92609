"""The run page's Fork form: staff start a new run reusing the journal before a step; the
new run's page says where it came from; refusals are messages, not errors."""

from __future__ import annotations

import re

import pytest

from tests.operators.conftest import People
from tests.operators.scenes import settle
from tests.support import Bell
from workflows import get_run, start
from workflows.models import Run, RunAudit

pytestmark = pytest.mark.django_db(transaction=True)


def test_staff_fork_a_run_from_the_page(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    run = start("test.event", {})
    settle(bell)  # step 1 done, waiting at 2
    page = c.get(f"/runs/{run.pk}/").content.decode()
    form = re.search(r"<form[^>]*actions/fork/.*?</form>", page, re.S)
    assert form is not None and "csrfmiddlewaretoken" in form.group(0)
    # Only finished positions can be reused: from step 1 or 2, not after the wait.
    assert re.findall(r'<option value="(\d+)"', form.group(0)) == ["1", "2"]

    r = c.post(f"/runs/{run.pk}/actions/fork/", {"from_step": "2", "reason": "again"})
    new = Run.objects.exclude(pk=run.pk).get(forked_from=run)
    assert r.status_code == 302 and r["Location"] == f"/runs/{new.pk}/"
    page = c.get(r["Location"]).content.decode()
    assert "forked from step 2 as run" in page  # the message
    assert f'href="/runs/{run.pk}/"' in page and "at step 2" in page  # the header's link
    entry = RunAudit.objects.get(run=run)
    assert (entry.action, entry.from_step, entry.actor, entry.reason) == (
        "fork",
        2,
        "user:ops",
        "again",
    )
    assert get_run(run.pk).status == "suspended"  # the original is untouched


def test_a_refused_fork_is_a_message(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    run = start("test.event", {})
    settle(bell)
    r = c.post(f"/runs/{run.pk}/actions/fork/", {"from_step": "3"}, follow=True)
    assert r.status_code == 200 and "a fork reuses finished positions only" in r.content.decode()
    r = c.post(f"/runs/{run.pk}/actions/fork/", {"from_step": "x"}, follow=True)
    assert "Choose a journal position" in r.content.decode()
    assert not Run.objects.filter(forked_from=run).exists()


def test_only_operators_fork(people: People, bell: Bell) -> None:
    run = start("test.event", {})
    settle(bell)
    for user in (people.watcher, people.ana, people.otto):
        r = people.client(user).post(f"/runs/{run.pk}/actions/fork/", {"from_step": "1"})
        assert r.status_code == 403
        assert "actions/fork/" not in people.client(user).get(f"/runs/{run.pk}/").content.decode()
    assert not Run.objects.filter(forked_from=run).exists()


def test_a_web_user_who_forks_a_run_they_started_sees_their_fork(
    people: People, bell: Bell
) -> None:
    """Review finding: a web fork recorded ``created_by`` as "user:<name>" where a web start
    records the bare user name, which is what the run pages' "runs they started" rule
    compares: staff who may act on runs but see only their own were sent to a 404."""
    from django.contrib.auth.models import Permission, User

    lead = User.objects.create_user("lead", password="pw-lead-123", is_staff=True)
    lead.user_permissions.add(
        Permission.objects.get(content_type__app_label="workflows", codename="change_run"),
        Permission.objects.get(content_type__app_label="workflows", codename="start_run"),
    )
    run = start("test.event", {}, created_by="lead")
    settle(bell)
    c = people.client(lead)
    assert c.get(f"/runs/{run.pk}/").status_code == 200
    r = c.post(f"/runs/{run.pk}/actions/fork/", {"from_step": "2"})
    new = Run.objects.get(forked_from=run)
    assert r.status_code == 302 and r["Location"] == f"/runs/{new.pk}/"
    assert new.created_by == "lead"
    assert c.get(r["Location"]).status_code == 200
