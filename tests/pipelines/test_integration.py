"""The built-in pipelines on real Celery workers (PostgreSQL + Redis), offline provider."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from pipelines.builtin import document_batch, support_ticket, thread_analysis
from pipelines.models import Ticket
from reviews.models import Gate
from reviews.services import decide_gate
from tests.live import wait_until
from workflows import get_run, start
from workflows.core import clock
from workflows.models import Run, Step

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(run: Run) -> Run | None:
    fresh = get_run(run.pk)
    return fresh if fresh.is_terminal else None


def test_the_built_in_pipelines_run_end_to_end_on_real_workers(live: Any) -> None:
    live.worker()
    live.beat()
    analysis = start("thread_analysis", {"thread": thread_analysis.SAMPLE_THREAD})
    ticket = start("support_ticket", support_ticket.SAMPLE)
    batch = start("document_batch", document_batch.SAMPLE)
    gate = wait_until(
        lambda: Gate.objects.filter(run=analysis, status="open").first(),
        60,
        message="the thread analysis gate",
    )
    assert gate.title == "Verify DARVO analysis"
    decide_gate(gate.pk, outcome="approve", actor="tester")
    for run in (analysis, ticket, batch):
        done = wait_until(lambda run=run: finished(run), 60, message=f"{run.workflow} to finish")
        assert done.status == "succeeded", done.error
    assert get_run(analysis.pk).output["context"]["report"]["generated_by"] == "offline"
    assert get_run(batch.pk).output["count"] == 3
    # The reply leaves through the outbox, delivered by beat.
    wait_until(
        lambda: Ticket.objects.filter(run=ticket, reply_sent_at__isnull=False).exists(),
        30,
        message="the support reply to be delivered",
    )


FIVE = {
    "documents": [
        {
            "title": f"Report {i}",
            "text": f"Report {i} from Acme Corp in Lyon. Revenue rose by ${i}00 "
            f"in Q{i % 4 + 1} 2024. Maria Lopez said the plan worked.",
        }
        for i in range(1, 6)
    ]
}


def test_a_batch_killed_after_three_documents_resumes_at_the_fourth(live: Any) -> None:
    """SIGKILL the worker while document 4 is summarized; documents 1-3 are not redone.

    One document at a time (max_parallel=1) and a slow offline provider make "after three of
    five" a moment the test can hit.
    """
    live.beat()
    worker = live.worker(SLUICE_LLM_OFFLINE_LATENCY="1.0")
    run = start("document_batch", FIVE, max_parallel=1)

    def summarizing_fourth() -> Step | None:
        rows = Step.objects.filter(run=run, kind="branch", name="summarize_document")
        if rows.filter(branch__lt=3, status="succeeded").count() < 3:
            return None
        return rows.filter(branch=3, status="running").first()

    fourth = wait_until(summarizing_fourth, 60, message="documents 1-3 summarized, 4 running")
    os.kill(int(fourth.lease_owner.split(":")[1]), signal.SIGKILL)  # the child running it
    live.kill(worker, signal.SIGKILL)  # and its parent, so nothing is requeued for us
    killed_at = clock.now()  # the workers stamp finished_at on the engine's clock
    before = {
        s.pk: (s.attempt, s.finished_at) for s in Step.objects.filter(run=run, status="succeeded")
    }

    live.worker(name="w2", SLUICE_LLM_OFFLINE_LATENCY="0")
    run = wait_until(lambda: finished(run), 90, message="the batch to finish")
    assert run.status == "succeeded", run.error
    assert [d["title"] for d in run.output["documents"]] == [f"Report {i}" for i in range(1, 6)]

    summaries = {s.branch: s for s in Step.objects.filter(run=run, name="summarize_document")}
    for branch in (0, 1, 2):
        assert summaries[branch].attempt == 1
        assert summaries[branch].finished_at < killed_at
    assert summaries[3].attempt == 2  # the attempt the kill interrupted counts
    assert summaries[4].attempt == 1
    # Nothing that had finished before the kill ran again.
    for pk, (attempt, finished_at) in before.items():
        row = Step.objects.get(pk=pk)
        assert (row.attempt, row.finished_at) == (attempt, finished_at)
    extracts = Step.objects.filter(run=run, name="extract_document")
    assert sorted(extracts.values_list("attempt", flat=True)) == [1] * 5
