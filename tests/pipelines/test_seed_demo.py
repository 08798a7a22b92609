"""``make run`` seeds demo runs of the built-in pipelines, once."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from workflows.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db]


def test_it_starts_the_demo_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)
    call_command("seed_demo", stdout=StringIO())
    call_command("seed_demo", stdout=StringIO())
    assert sorted(Run.objects.values_list("workflow", flat=True)) == [
        "document_batch",
        "support_ticket",
        "thread_analysis",
        "thread_analysis",
    ]
    assert all(
        key.startswith("demo:") for key in Run.objects.values_list("idempotency_key", flat=True)
    )


def test_it_can_skip_the_demo_runs() -> None:
    call_command("seed_demo", "--no-runs", stdout=StringIO())
    assert not Run.objects.exists()
