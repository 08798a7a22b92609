"""The built-in pipelines end to end in-process (the in-memory doorbell), offline and over the
fake provider. ``test_integration.py`` runs them on real workers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from pipelines.builtin import document_batch, support_ticket
from pipelines.models import Ticket
from pipelines.registry import get_pipeline, mermaid_for_run
from reviews.models import Gate
from reviews.services import decide_gate
from tests.pipelines import fake_llm as fakes
from tests.pipelines.fake_llm import FakeLLM
from tests.support import Bell
from workflows import get_run, start
from workflows.core.outbox import deliver_due
from workflows.models import Outbox, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

CALM_THREAD = (
    "Ann: Could we move the meeting to Friday?\nBo: Sure, Friday works. Thanks for asking!"
)


def settle(bell: Bell, run: Run) -> Run:
    bell.settle()
    return get_run(run.pk)


def class_line(text: str, mark: str) -> set[str]:
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["class"] and parts[-1] == mark:
            return set(parts[1].split(","))
    return set()


def test_every_built_in_pipeline_is_registered_with_a_valid_sample_input() -> None:
    from workflows.core.services import validate_input

    for name in ("thread_analysis", "support_ticket", "document_batch"):
        definition = get_pipeline(name)
        assert definition is not None
        assert definition.extra["mermaid"].startswith("stateDiagram-v2\n")
        assert callable(definition.extra["mermaid_for_run"])
        validate_input(name, definition.extra["sample_input"])


# --- thread_analysis --------------------------------------------------------------------------


def test_thread_analysis_finds_darvo_and_asks_for_the_darvo_review(
    bell: Bell, offline: Any
) -> None:
    run = settle(
        bell, start("thread_analysis", get_pipeline("thread_analysis").extra["sample_input"])
    )
    assert run.status == "suspended"
    gate = Gate.objects.get(run=run, status="open")
    assert gate.title == "Verify DARVO analysis"
    assert gate.instruction.startswith("Please verify the analysis results.")
    darvo = gate.payload["darvo"]
    assert darvo["detected"] is True and darvo["speaker"] == "Sam"
    assert darvo["generated_by"] == "offline"
    assert {f["label"] for f in darvo["findings"]} == {"deny", "attack", "reverse"}
    assert gate.payload["tactics"]["most_frequent"]
    for row in Step.objects.filter(run=run, kind="branch"):
        assert (row.pool, row.usage["provider"], row.cost) == ("llm", "offline", Decimal(0))

    decide_gate(gate.pk, outcome="approve", actor="tester")
    run = settle(bell, run)
    assert run.status == "succeeded"
    assert run.output["trail"] == ["parsing", "analysis", "darvo_review", "synthesis", "complete"]
    report = run.output["context"]["report"]
    assert report["risk_level"] == "high"
    assert report["generated_by"] == "offline"
    assert any("offline analyzer" in c for c in report["caveats"])


def test_thread_analysis_without_darvo_takes_the_standard_review(bell: Bell, offline: Any) -> None:
    run = settle(bell, start("thread_analysis", {"thread": CALM_THREAD}))
    gate = Gate.objects.get(run=run, status="open")
    assert gate.title == "Verify thread analysis"
    assert gate.payload["darvo"]["detected"] is False
    assert class_line(mermaid_for_run(run), "current") == {"standard_review"}


def test_thread_analysis_fails_cleanly_on_a_thread_without_messages(
    bell: Bell, offline: Any
) -> None:
    run = settle(bell, start("thread_analysis", {"thread": "no speaker names here"}))
    assert run.status == "failed"
    assert (
        "ended in final state 'failed': parsing failed with NonRetryableError: no messages"
        in run.error["message"]
    )


def test_thread_analysis_goes_on_when_one_analysis_fails(
    bell: Bell,
    offline: Any,
    fake_llm: FakeLLM,
) -> None:
    offline.SLUICE_LLM_MODELS = {
        "thread_analysis.analyze_tactics": f"openai-compatible:fake@{fake_llm.base_url}"
    }
    fake_llm.fail(fakes.status(400))
    run = settle(bell, start("thread_analysis", {"thread": CALM_THREAD}))
    assert run.status == "suspended"
    gate = Gate.objects.get(run=run, status="open")
    failed = gate.payload["failed_analyses"]["analysis"]
    assert list(failed) == ["tactics"]
    assert failed["tactics"]["type"] == "RequestRejected"
    assert gate.payload["tactics"] is None and gate.payload["darvo"] is not None
    decide_gate(gate.pk, outcome="approve", actor="tester")
    run = settle(bell, run)
    assert run.status == "succeeded"
    assert (
        "Analyses missing from analysis: tactics failed."
        in run.output["context"]["report"]["caveats"]
    )


def test_a_rejection_reruns_the_analyses_with_the_reviewers_comment_in_the_prompt(
    bell: Bell,
    offline: Any,
    fake_llm: FakeLLM,
) -> None:
    offline.SLUICE_LLM_MODELS = {
        "thread_analysis.analyze_tactics": f"openai-compatible:fake@{fake_llm.base_url}"
    }
    run = settle(bell, start("thread_analysis", {"thread": CALM_THREAD}))
    gate = Gate.objects.get(run=run, status="open")
    decide_gate(
        gate.pk, outcome="reject", comment="Bo is being sarcastic, look again.", actor="tester"
    )
    run = settle(bell, run)
    second = Gate.objects.get(run=run, status="open")
    assert second.attempt == 2
    first_prompt, second_prompt = (str(r.body["messages"]) for r in fake_llm.requests)
    assert "sarcastic" not in first_prompt
    assert (
        "A reviewer rejected the previous analysis with this comment: Bo is being "
        "sarcastic, look again." in second_prompt
    )
    assert second.payload["darvo"]["revision_note"] == (
        "Revised after reviewer feedback: “Bo is being sarcastic, look again.”."
    )


# --- support_ticket ---------------------------------------------------------------------------


def test_support_ticket_grades_until_a_reply_passes_and_sends_it_once(
    bell: Bell, offline: Any
) -> None:
    run = settle(bell, start("support_ticket", support_ticket.SAMPLE))
    assert run.status == "succeeded"
    out = run.output
    assert (out["status"], out["attempts"], out["grade"]["passed"]) == ("resolved", 2, True)
    grades = [
        s.result["passed"]
        for s in Step.objects.filter(run=run, name="grade_resolution").order_by("position")
    ]
    assert grades == [False, True]
    ticket = Ticket.objects.get(run=run)
    assert (ticket.status, ticket.category, ticket.urgency) == ("resolved", "billing", "high")
    row = Outbox.objects.get(key=f"support-reply:{ticket.pk}")
    assert row.payload["to"] == "dana@example.com"
    # The step is idempotent on the ticket: a second send finds the row it wrote.
    support_ticket.send_reply(ticket.pk, "dana@example.com", "again", "body")
    assert Outbox.objects.filter(kind="support.reply").count() == 1
    assert deliver_due() == 1
    ticket.refresh_from_db()
    assert ticket.reply_sent_at is not None and ticket.reply == out["reply"]
    assert "KB-101" in ticket.reply and f"#{ticket.pk}" in ticket.reply
    assert class_line(mermaid_for_run(run), "current") == {"done"}


def test_a_subject_with_line_breaks_is_mailed_on_one_line(
    bell: Bell, offline: Any, settings: Any
) -> None:
    """The customer's subject goes into a mail header, which refuses CR and LF (review
    finding: the reply was never mailed, retried for a day, while the ticket said resolved)."""
    from django.core import mail

    settings.SLUICE_SUPPORT_SEND_EMAIL = True
    subject = "Charged twice\r\nBcc: evil@example.com"
    run = settle(bell, start("support_ticket", {**support_ticket.SAMPLE, "subject": subject}))
    assert run.status == "succeeded"
    assert deliver_due() == 1
    (sent,) = mail.outbox
    assert sent.subject == "Re: Charged twice Bcc: evil@example.com" and sent.bcc == []
    assert Ticket.objects.get(run=run).reply_sent_at is not None


UNKNOWN_TOPIC = {
    "customer_email": "lee@example.com",
    "subject": "Parrot in the office",
    "message": "Our office parrot keeps chewing the plants. What should we feed him?",
}


def test_support_ticket_asks_a_reviewer_when_no_reply_passes(bell: Bell, offline: Any) -> None:
    run = settle(bell, start("support_ticket", UNKNOWN_TOPIC))
    assert run.status == "suspended"
    assert Step.objects.filter(run=run, name="grade_resolution").count() == 5
    gate = Gate.objects.get(run=run, status="open")
    assert gate.title == "Approve support reply"
    assert gate.on_timeout == "reject"  # an ungraded reply is never sent by default
    assert "no knowledge-base article supports the answer" in gate.payload["grade"]["issues"]
    decide_gate(
        gate.pk, outcome="approve", edits={"reply": "Hi Lee, parrots like seeds."}, actor="tester"
    )
    run = settle(bell, run)
    assert run.output["status"] == "resolved"
    assert run.output["review"]["outcome"] == "approve"
    assert Outbox.objects.get(kind="support.reply").payload["body"] == "Hi Lee, parrots like seeds."
    assert Ticket.objects.get(run=run).resolution == "Hi Lee, parrots like seeds."


def test_a_rejected_support_reply_escalates_without_sending(bell: Bell, offline: Any) -> None:
    run = settle(bell, start("support_ticket", UNKNOWN_TOPIC))
    gate = Gate.objects.get(run=run, status="open")
    decide_gate(gate.pk, outcome="reject", comment="Needs a human.", actor="tester")
    run = settle(bell, run)
    assert (run.status, run.output["status"]) == ("succeeded", "escalated")
    assert Ticket.objects.get(run=run).status == "escalated"
    assert not Outbox.objects.filter(kind="support.reply").exists()
    assert class_line(mermaid_for_run(run), "current") == {"escalated"}


def test_support_ticket_reads_the_customers_history(bell: Bell, offline: Any) -> None:
    settle(bell, start("support_ticket", support_ticket.SAMPLE))
    second = settle(bell, start("support_ticket", {**support_ticket.SAMPLE, "subject": "Again"}))
    history = Step.objects.get(run=second, name="customer_history").result
    assert history["returning_customer"] is True
    assert history["previous_tickets"][0]["subject"] == "Charged twice for my subscription"


# --- document_batch ---------------------------------------------------------------------------


def test_document_batch_summarizes_and_finds_entities_per_document(
    bell: Bell, offline: Any
) -> None:
    run = settle(bell, start("document_batch", document_batch.SAMPLE))
    assert run.status == "succeeded"
    docs = run.output["documents"]
    assert [d["title"] for d in docs] == [
        "Quarterly update",
        "Partnership announcement",
        "Incident report",
    ]
    assert docs[0]["entities"]["organizations"] == ["Acme Corp"]
    assert docs[0]["entities"]["money"] == ["$4.2 million"]
    assert "Maria Lopez" in docs[0]["entities"]["people"]
    assert docs[1]["entities"]["emails"] == ["press@northwind.example"]
    assert docs[2]["entities"]["dates"] == ["2025-01-18"]
    assert "<p>" not in docs[2]["summary"]
    assert run.output["generated_by"] == "offline"
    llm_rows = Step.objects.filter(run=run, kind="branch", pool="llm")
    assert llm_rows.count() == 6  # summarize and entities for each of three documents
    assert all(r.usage["provider"] == "offline" and r.usage["input_tokens"] > 0 for r in llm_rows)
    text = mermaid_for_run(run)
    assert 'state "summarize · 3/3" as summarize' in text
    assert class_line(text, "current") == {"done"}


def test_document_batch_over_http_records_each_steps_cost(
    bell: Bell,
    offline: Any,
    fake_llm: FakeLLM,
) -> None:
    offline.SLUICE_LLM_MODEL = f"openai-compatible:fake@{fake_llm.base_url}"
    offline.SLUICE_LLM_PRICES = {**offline.SLUICE_LLM_PRICES, "openai-compatible:fake": (1.0, 2.0)}
    run = settle(bell, start("document_batch", document_batch.SAMPLE))
    assert run.status == "succeeded"
    assert run.output["generated_by"] == "openai-compatible:fake"
    rows = list(Step.objects.filter(run=run, kind="branch", pool="llm"))
    assert len(rows) == len(fake_llm.requests) == 6
    per_call = Decimal("0.000200")  # 120 in at $1/M + 40 out at $2/M
    assert all(r.cost == per_call and r.usage["model"] == "fake" for r in rows)
    assert get_run(run.pk).cost == per_call * 6
