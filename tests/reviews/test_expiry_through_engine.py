"""Gate expiry resolves waits only through the engine's API: a gate whose journal row no longer
waits is closed as canceled (it advanced nothing), never as "expired, auto-advanced"; the
reviews app writes no engine rows itself; and the run's timeline says the gate auto-advanced on
expiry rather than a plain "succeeded"."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

import reviews
from reviews.models import Gate, GateEvent
from reviews.services import expire_due_gates
from tests.reviews.conftest import open_gate
from tests.support import Bell
from workflows import get_run, timeline
from workflows.admin import StepAdmin
from workflows.models import Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def past_deadline(*gates: Gate) -> None:
    Gate.objects.filter(pk__in=[g.pk for g in gates]).update(
        deadline=timezone.now() - timedelta(seconds=1)
    )


def test_it_does_not_mark_a_gate_auto_advanced_when_its_step_no_longer_waits(
    bell: Bell,
) -> None:
    stale = open_gate(bell, on_timeout="reject")
    live = open_gate(bell, on_timeout="reject")
    # The engine moved on without the gate hearing of it (a repair, a restart).
    Step.objects.filter(pk=stale.step_id).update(status="canceled")
    past_deadline(stale, live)
    assert expire_due_gates() == 2
    stale.refresh_from_db()
    live.refresh_from_db()
    assert (live.status, live.outcome, live.timed_out) == ("expired", "reject", True)
    assert (stale.status, stale.outcome, stale.timed_out) == ("canceled", "", False)
    assert list(GateEvent.objects.filter(gate=stale).values_list("kind", "detail")) == [
        ("opened", GateEvent.objects.get(gate=stale, kind="opened").detail),
        ("canceled", {"reason": "the run no longer waits for it"}),
    ]
    assert Step.objects.get(pk=stale.step_id).status == "canceled"  # left alone
    bell.drain()
    assert get_run(live.run_id).status == "succeeded"


def test_the_timeline_says_auto_advanced_on_expiry(bell: Bell) -> None:
    gate = open_gate(bell, on_timeout="approve")
    past_deadline(gate)
    expire_due_gates()
    bell.drain()
    run = get_run(gate.run_id)
    journal = list(Step.objects.filter(run=run))
    entries = [item.entry for item in timeline.build(run, journal).items]
    (entry,) = [e for e in entries if e.row.kind == "gate"]
    assert entry.note == "auto-advanced on expiry (approve)"
    # The admin's journal says it too, in the status column.
    row = Step.objects.get(pk=gate.step_id)
    assert "auto-advanced on expiry" in StepAdmin.badge(None, row)  # type: ignore[arg-type]
    assert ">succeeded<" not in StepAdmin.badge(None, row)  # type: ignore[arg-type]


def test_the_reviews_app_writes_no_engine_rows() -> None:
    source = "\n".join(p.read_text() for p in Path(reviews.__file__).parent.glob("*.py"))
    assert not re.search(r"\bStep\.objects\b", source)
    assert not re.search(r"\bRun\.objects\.filter\([^)]*\)\s*\.update\(", source)
    assert ".update(wake_requested_at" not in source


def test_the_run_page_badges_say_auto_advanced_on_expiry(
    bell: Bell, django_user_model: Any, client: Any
) -> None:
    gate = open_gate(bell, on_timeout="approve")
    past_deadline(gate)
    expire_due_gates()
    bell.drain()
    staff = django_user_model.objects.create_superuser("olga", password="pw")
    client.force_login(staff)
    page = client.get(f"/runs/{gate.run_id}/").content.decode()
    # Both the timeline's badge and the journal's status column, not a plain "succeeded".
    assert page.count(">auto-advanced on expiry</span>") == 2
