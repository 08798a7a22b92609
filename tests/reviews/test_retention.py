"""Defect 11, retention: pruning a run keeps (``SLUICE_GATE_TRAIL_ON_PRUNE="keep"``) or
archives (``"archive"``) its gates' audit trail; delivered and dead outbox rows are pruned
after ``SLUICE_OUTBOX_RETENTION_DAYS``, pending ones never."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from reviews.models import Gate, GateEvent, GateRecord
from reviews.services import claim_gate, decide_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows import get_run
from workflows.core.sweeper import prune, prune_outbox
from workflows.models import Outbox, Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def decided_and_old(bell: Bell, people: People) -> Gate:
    """A gate claimed, then decided with a comment and edits; its run finished long ago."""
    gate = open_gate(bell)
    claim_gate(gate.pk, people.ana)
    decide_gate(
        gate.pk,
        outcome="reject",
        comment="The renewal clause is wrong",
        actor="ana",
        user=people.ana,
    )
    bell.settle()
    run = get_run(gate.run_id)
    assert run.is_terminal, run.status
    Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(days=60))
    return Gate.objects.get(pk=gate.pk)


def check_trail(trail: dict[str, Any], gate: Gate) -> None:
    assert trail["gate_id"] == gate.pk and trail["run_id"] == str(gate.run_id)
    assert (trail["status"], trail["outcome"], trail["decided_by"]) == ("decided", "reject", "ana")
    assert trail["comment"] == "The renewal clause is wrong"
    assert trail["decided_at"].startswith(f"{gate.decided_at:%Y-%m-%d}")
    assert [e["kind"] for e in trail["events"]] == ["opened", "claimed", "decided"]
    assert trail["events"][1]["actor"] == "ana"


@override_settings(SLUICE_GATE_TRAIL_ON_PRUNE="keep")
def test_pruning_a_run_keeps_its_gates_trail_in_the_database(bell: Bell, people: People) -> None:
    gate = decided_and_old(bell, people)
    assert prune() == 1
    assert not Run.objects.filter(pk=gate.run_id).exists()
    assert not Gate.objects.filter(pk=gate.pk).exists()
    assert not GateEvent.objects.filter(gate_id=gate.pk).exists()
    record = GateRecord.objects.get(gate_id=gate.pk)
    assert (record.run_id, record.status, record.outcome, record.decided_by) == (
        gate.run_id,
        "decided",
        "reject",
        "ana",
    )
    check_trail(record.trail, gate)
    assert prune() == 0 and GateRecord.objects.count() == 1  # retention leaves it alone


def test_pruning_a_run_archives_its_gates_trail_to_a_file(
    bell: Bell, people: People, tmp_path: Path
) -> None:
    gate = decided_and_old(bell, people)
    with override_settings(SLUICE_GATE_TRAIL_ON_PRUNE="archive", SLUICE_GATE_ARCHIVE_DIR=tmp_path):
        assert prune() == 1
    assert not Gate.objects.filter(pk=gate.pk).exists()
    assert not GateRecord.objects.exists()  # archived, not kept in the database
    (path,) = tmp_path.glob("gates-*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 1
    check_trail(lines[0], gate)


def test_an_unknown_mode_prunes_nothing(bell: Bell, people: People) -> None:
    gate = decided_and_old(bell, people)
    with (
        override_settings(SLUICE_GATE_TRAIL_ON_PRUNE="drop"),
        pytest.raises(ImproperlyConfigured),
    ):
        prune()
    assert Gate.objects.filter(pk=gate.pk).exists() and Run.objects.filter(pk=gate.run_id).exists()


@override_settings(SLUICE_OUTBOX_RETENTION_DAYS=7, SLUICE_PRUNE_BATCH=2)
def test_delivered_and_dead_outbox_rows_are_pruned_pending_ones_stay() -> None:
    now = timezone.now()
    old, young = now - timedelta(days=8), now - timedelta(days=6)

    def row(key: str, status: str, created: Any, delivered: Any = None) -> None:
        Outbox.objects.create(kind="webhook", key=key, status=status, delivered_at=delivered)
        Outbox.objects.filter(key=key).update(created_at=created)

    row("delivered-old", "delivered", old, old)
    row("delivered-old-2", "delivered", old, old)
    row("delivered-old-3", "delivered", old, old)
    row("delivered-young", "delivered", old, young)  # created long ago, delivered lately
    row("dead-old", "dead", old)
    row("dead-young", "dead", young)
    row("pending-old", "pending", old)
    assert prune_outbox() == 4
    assert set(Outbox.objects.values_list("key", flat=True)) == {
        "delivered-young",
        "dead-young",
        "pending-old",
    }
    assert prune_outbox() == 0


@override_settings(SLUICE_OUTBOX_RETENTION_DAYS=7)
def test_the_hourly_prune_prunes_the_outbox_too() -> None:
    old = timezone.now() - timedelta(days=30)
    Outbox.objects.create(kind="webhook", key="k", status="delivered", delivered_at=old)
    prune()
    assert not Outbox.objects.exists()
