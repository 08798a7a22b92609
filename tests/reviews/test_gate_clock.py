"""Gate deadlines are written on the engine's clock (the database's, ``workflows.core.clock``):
the step that opens a gate computes it from its own start. The reviews code judged them on the
host's clock, so a web or beat host whose clock was off expired gates early or late by the
difference, escalated them at the wrong time, and showed countdowns that were off too."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from reviews.models import Gate
from reviews.services import escalate_due_gates, expire_due_gates, open_queue
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows.core import clock

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_host_ten_minutes_slow_expires_a_due_gate_on_time(bell: Bell, skew: Any) -> None:
    gate = open_gate(bell, on_timeout="reject")
    due = open_gate(bell, on_timeout="approve")
    Gate.objects.filter(pk=due.pk).update(deadline=clock.now() - timedelta(seconds=1))
    Gate.objects.filter(pk=gate.pk).update(deadline=clock.now() + timedelta(minutes=5))
    skew(-600.0)  # the beat host is ten minutes behind the database
    assert expire_due_gates() == 1
    assert Gate.objects.get(pk=due.pk).status == "expired"
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_a_host_ten_minutes_fast_does_not_expire_a_gate_early(bell: Bell, skew: Any) -> None:
    gate = open_gate(bell, on_timeout="reject")
    Gate.objects.filter(pk=gate.pk).update(deadline=clock.now() + timedelta(minutes=5))
    skew(600.0)
    assert expire_due_gates() == 0
    assert Gate.objects.get(pk=gate.pk).status == "open"


def test_escalation_and_the_due_filter_are_on_the_engines_clock(
    bell: Bell, skew: Any, people: People
) -> None:
    gate = open_gate(bell, on_timeout="reject", escalate_after_s=3600, escalate_to="leads")
    Gate.objects.filter(pk=gate.pk).update(
        escalate_at=clock.now() + timedelta(minutes=5), deadline=clock.now() + timedelta(minutes=30)
    )
    skew(600.0)  # ten minutes fast
    assert escalate_due_gates() == 0
    assert not open_queue(people.ana, due_within=timedelta(minutes=25)).exists()
    assert open_queue(people.ana, due_within=timedelta(minutes=35)).exists()


def test_the_queue_counts_down_from_the_engines_clock(
    bell: Bell, skew: Any, client: Any, people: People
) -> None:
    gate = open_gate(bell, on_timeout="reject")
    Gate.objects.filter(pk=gate.pk).update(deadline=clock.now() + timedelta(minutes=30))
    skew(3600.0)  # an hour fast: the gate would show as overdue
    client.force_login(people.ana)
    page = client.get("/reviews/").content.decode()
    assert "overdue" not in page
    assert "29m" in page or "30m" in page


def test_a_reminder_is_due_on_the_engines_clock(bell: Bell, skew: Any) -> None:
    from reviews.notifications import remind_due

    gate = open_gate(bell, on_timeout="reject")
    Gate.objects.filter(pk=gate.pk).update(remind_at=clock.now() + timedelta(minutes=5))
    skew(600.0)
    assert remind_due() == 0
    assert Gate.objects.get(pk=gate.pk).reminded_at is None
