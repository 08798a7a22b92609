"""Gates on real Celery workers and beat (PostgreSQL + Redis): a decision resumes its run, a
burst of expiring gates is swept by beat and every run resumes, in chunks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from reviews.models import Gate
from reviews.services import decide_gate
from tests.live import wait_until
from tests.reviews.conftest import People
from workflows import get_run, start
from workflows.models import Run

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MODULES = "tests.sample_workflows,tests.reviews.workflows"


def test_it_resumes_a_run_on_a_real_worker_after_a_decision(live: Any, people: People) -> None:
    live.worker(SLUICE_WORKFLOW_MODULES=MODULES)
    run = start("test.review_loop", {})
    gate = wait_until(
        lambda: Gate.objects.filter(run=run, status="open").first(), 30, message="the first gate"
    )
    decide_gate(gate.pk, outcome="reject", comment="again", actor="ana", user=people.ana)
    again = wait_until(
        lambda: Gate.objects.filter(run=run, status="open").first(),
        30,
        message="the second attempt",
    )
    assert again.attempt == 2
    decide_gate(again.pk, outcome="approve", actor="ana", user=people.ana)
    done = wait_until(lambda: (r := get_run(run.pk)).is_terminal and r, 30, message="the run")
    assert done.output == {"rounds": 2, "published": "published: Draft number 2"}


def test_beat_expires_a_burst_of_gates_and_every_run_resumes(live: Any) -> None:
    live.worker(SLUICE_WORKFLOW_MODULES=MODULES, SLUICE_GATE_RESUME_CHUNK="10")
    runs = [
        start("test.review", {"on_timeout": "reject" if i % 2 else "approve"}) for i in range(60)
    ]
    wait_until(
        lambda: Gate.objects.filter(status="open").count() == 60, 60, message="60 open gates"
    )
    Gate.objects.update(deadline=timezone.now() - timedelta(seconds=1))
    live.beat()
    wait_until(
        lambda: Run.objects.filter(status="succeeded").count() == 60,
        60,
        message="every run resumed",
    )
    for run in runs:
        out = get_run(run.pk).output
        assert out["timed_out"] is True and out["decided_by"] == ""
        assert out["outcome"] == Gate.objects.get(run=run).on_timeout
    assert not Gate.objects.filter(status="open").exists()
