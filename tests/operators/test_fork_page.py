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
