"""Operator actions leave an actor: cancel, retry and restart from the run page and the admin
are recorded with the user and the optional reason, and shown on the run page and in admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.operators.conftest import People
from tests.operators.scenes import settle
from tests.support import Bell
from workflows import start
from workflows.models import Run, RunAudit, Step

pytestmark = pytest.mark.django_db(transaction=True)

HOSTILE = '<script>alert("x")</script> & why'


def _failed_run(bell: Bell) -> Run:
    run = start("test.refuse", {})
    settle(bell)
    assert Run.objects.get(pk=run.pk).status == "failed"
    return run


def test_the_run_page_records_cancel_retry_and_restart(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    waiting = start("test.event", {})
    failing = _failed_run(bell)
    settle(bell)
    c.post(f"/runs/{waiting.pk}/actions/cancel/", {"reason": "customer withdrew"})
    c.post(f"/runs/{failing.pk}/actions/retry/", {"reason": "provider is back"})
    settle(bell)
    c.post(f"/runs/{waiting.pk}/actions/restart/", {"from_step": "1"})
    rows = RunAudit.objects.order_by("id")
    assert [(a.run_id, a.action, a.from_step, a.reason) for a in rows] == [
        (waiting.pk, "cancel", None, "customer withdrew"),
        (failing.pk, "retry", 1, "provider is back"),
        (waiting.pk, "restart", 1, ""),
    ]
    assert {(a.actor, a.actor_user_id) for a in rows} == {("user:ops", people.ops.pk)}


def test_the_run_page_shows_the_audit_escaped(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    waiting = start("test.event", {})
    settle(bell)
    page = c.get(f"/runs/{waiting.pk}/").content.decode()
    assert "No one has canceled, restarted or retried this run." in page
    assert 'name="reason"' in page  # the cancel form asks why
    c.post(f"/runs/{waiting.pk}/actions/cancel/", {"reason": HOSTILE})
    page = c.get(f"/runs/{waiting.pk}/").content.decode()
    audit = page[page.index('id="audit-title"') :]
    assert "<strong>cancel</strong>" in audit and "user:ops" in audit
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; why" in audit
    assert '<script>alert("x")</script>' not in page


def test_a_refused_run_page_action_records_nothing(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    done = start("test.chain", {"n": 1})
    settle(bell)
    c.post(f"/runs/{done.pk}/actions/cancel/", {"reason": "too late"})
    r = c.post(f"/runs/{done.pk}/actions/restart/", {"from_step": "1000000"}, follow=True)
    assert "past the journal" in r.content.decode()
    assert people.client(people.ana).post(f"/runs/{done.pk}/actions/cancel/").status_code == 403
    assert not RunAudit.objects.exists()


def _act(c: Client, action: str, *runs: Run, **extra: str) -> Any:
    return c.post(
        "/admin/workflows/run/",
        {"action": action, "_selected_action": [str(r.pk) for r in runs], **extra},
        follow=True,
    )


def test_the_admin_actions_record_the_user_and_the_reason(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    waiting = start("test.event", {})
    failing = _failed_run(bell)
    done = start("test.chain", {"n": 2})
    settle(bell)
    _act(c, "cancel_runs", waiting, reason="stuck on a dead provider")
    _act(c, "retry_failed_step", failing, reason="retry after fix")
    settle(bell)
    # The restart action asks for the position on its own page, carrying the reason over.
    page = _act(c, "restart_from_step", done, reason="rerun the summary").content.decode()
    assert 'value="rerun the summary"' in page
    _act(c, "restart_from_step", done, apply="1", from_step="2", reason="rerun the summary")
    rows = RunAudit.objects.order_by("id")
    assert [(a.run_id, a.action, a.from_step, a.reason) for a in rows] == [
        (waiting.pk, "cancel", None, "stuck on a dead provider"),
        (failing.pk, "retry", 1, "retry after fix"),
        (done.pk, "restart", 2, "rerun the summary"),
    ]
    assert {(a.actor, a.actor_user_id) for a in rows} == {("admin:ops", people.ops.pk)}
    assert Step.objects.filter(run=done, superseded=True).exists()


def test_the_admin_shows_the_audit_read_only(people: People, bell: Bell) -> None:
    c = people.client(people.ops)
    waiting = start("test.event", {})
    settle(bell)
    _act(c, "cancel_runs", waiting, reason=HOSTILE)
    page = c.get(f"/admin/workflows/run/{waiting.pk}/change/").content.decode()
    assert "audit trail" in page.lower() and "admin:ops" in page
    assert "&lt;script&gt;" in page and '<script>alert("x")</script>' not in page
    # The admin refuses a restart position past any journal in the form itself.
    page = _act(c, "restart_from_step", waiting, apply="1", from_step="10000000").content.decode()
    assert "Ensure this value is less than or equal to 1000000" in page
    assert RunAudit.objects.count() == 1
