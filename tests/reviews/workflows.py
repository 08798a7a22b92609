"""Workflows with review gates, for the reviews tests (imported by tests and real workers)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import pydantic

from workflows import step, workflow

ANALYSES: dict[str, Any] = {
    "summary": "The supplier contract renews automatically unless canceled 90 days ahead.",
    "document": "contract-2291.pdf",
    "analyses": [
        {
            "title": "Renewal clause",
            "finding": "Auto-renews for 12 months; notice period is 90 days.",
            "confidence": 0.92,
            "evidence": [
                {
                    "quote": "This Agreement shall renew automatically for successive twelve (12) "
                    "month terms",
                    "source": "§ 14.2",
                    "url": "https://example.com/c/14",
                },
                "Notice of non-renewal must be given ninety (90) days prior.",
            ],
        },
        {
            "title": "Liability cap",
            "finding": "Capped at fees paid in the prior 12 months; gross negligence excluded.",
            "confidence": 0.64,
            "evidence": [
                {"quote": "aggregate liability shall not exceed the fees paid", "source": "§ 9.1"}
            ],
        },
        {
            "title": "Data processing",
            "finding": "No DPA attached although personal data is processed.",
            "confidence": 0.31,
            "evidence": ["Supplier may process Customer Personal Data"],
            "model": "gpt-4o-mini",
        },
    ],
}

SENTIMENT_FIELDS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {
            "type": "string",
            "enum": ["positive", "neutral", "negative"],
            "title": "Sentiment",
        },
        "score": {"type": "number", "minimum": 0, "maximum": 1, "title": "Score"},
        "notes": {"type": "string", "maxLength": 500, "title": "Notes"},
    },
    "required": ["sentiment", "score"],
}


def decision_output(d: Any) -> dict[str, Any]:
    return {
        "outcome": d.outcome,
        "comment": d.comment,
        "edits": d.edits,
        "decided_by": d.decided_by,
        "timed_out": d.timed_out,
        "decided_at": d.decided_at.isoformat() if d.decided_at else None,
    }


@workflow(name="test.review")
def review_wf(
    ctx: Any,
    title: str = "Check the contract analysis",
    timeout_s: float = 3600,
    on_timeout: str = "approve",
    group: str = "reviewers",
    payload: Any = None,
    fields: dict[str, Any] | None = None,
    choices: list[str] | None = None,
    approvals: int = 1,
    separation_of_duties: bool = False,
    escalate_after_s: float | None = None,
    escalate_to: str = "",
) -> dict[str, Any]:
    d = ctx.review(
        title,
        "Please verify the analysis results.",
        ANALYSES if payload is None else payload,
        timeout=timedelta(seconds=timeout_s),
        on_timeout=on_timeout,
        choices=tuple(choices or ("approve", "reject")),
        group=group,
        fields=fields,
        approvals=approvals,
        separation_of_duties=separation_of_duties,
        escalate_after=timedelta(seconds=escalate_after_s) if escalate_after_s else None,
        escalate_to=escalate_to,
    )
    return decision_output(d) | ({"approvals": list(d.approvals)} if d.approvals else {})


class Correction(pydantic.BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    score: float = pydantic.Field(ge=0, le=1)


@workflow(name="test.review_model")
def review_model_wf(ctx: Any) -> dict[str, Any]:
    d = ctx.review(
        "Check the sentiment",
        "Correct it if needed.",
        {"sentiment": "positive", "score": 0.7},
        fields=Correction,
    )
    return {"type": type(d.edits).__name__, "edits": d.edits.model_dump() if d.edits else None}


@step
def draft(round_no: int) -> dict[str, Any]:
    return {
        "summary": f"Draft number {round_no}",
        "analyses": [{"title": "Tone", "finding": "Neutral", "confidence": 0.5 + round_no / 10}],
    }


@step
def publish(text: str) -> str:
    return f"published: {text}"


@workflow(name="test.review_loop")
def review_loop_wf(ctx: Any, max_rounds: int = 3) -> dict[str, Any]:
    """Draft, review, redraft until approved: the run loops back to the same gate."""
    for round_no in range(1, max_rounds + 1):
        text = ctx.run(draft, round_no)
        d = ctx.review(
            "Approve the draft", "Approve it or send it back.", text, on_timeout="reject"
        )
        if d.approved:
            return {"rounds": round_no, "published": ctx.run(publish, text["summary"])}
    return {"rounds": None}


@workflow(name="test.review_bad_timeout")
def review_bad_wf(ctx: Any) -> None:
    ctx.review("Broken", "", {}, on_timeout="maybe")


# --- realistic pipelines for the browser tests and the screenshots ------------------------------

TICKET: dict[str, Any] = {
    "summary": "Customer reports double charge after upgrading plan; asks for refund.",
    "analyses": [
        {
            "title": "Category",
            "result": "billing",
            "confidence": 0.88,
            "evidence": [
                {
                    "quote": "I was charged twice for the Pro plan this month",
                    "source": "ticket #48213",
                }
            ],
        },
        {
            "title": "Urgency",
            "result": "high: the customer mentions a chargeback",
            "confidence": 0.57,
            "evidence": ["If this isn't fixed by Friday I'll file a chargeback"],
        },
    ],
    "category": "billing",
    "priority": 2,
}

TICKET_FIELDS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {
            "type": "string",
            "title": "Category",
            "enum": ["billing", "bug", "account", "feature request"],
        },
        "priority": {
            "type": "integer",
            "title": "Priority",
            "minimum": 1,
            "maximum": 4,
            "description": "1 is the most urgent.",
        },
        "reply_draft": {
            "type": "string",
            "title": "Reply draft",
            "format": "textarea",
            "default": "Hi! Sorry about the double charge — we have refunded it.",
        },
    },
    "required": ["category", "priority"],
}


@workflow(name="contracts.clause_check")
def clause_check_wf(
    ctx: Any, title: str = "Verify the renewal and liability clauses", timeout_s: float = 6 * 3600
) -> dict[str, Any]:
    d = ctx.review(
        title,
        "Check each finding against the quoted clause. Reject if a finding is "
        "not supported by its evidence.",
        ANALYSES,
        timeout=timedelta(seconds=timeout_s),
    )
    return decision_output(d)


@workflow(name="support.ticket_triage")
def triage_wf(
    ctx: Any, title: str = "Confirm the triage of ticket #48213", timeout_s: float = 3600
) -> dict[str, Any]:
    d = ctx.review(
        title,
        "Confirm the category and priority the model chose; correct them if they are wrong.",
        TICKET,
        timeout=timedelta(seconds=timeout_s),
        fields=TICKET_FIELDS,
        group="reviewers",
    )
    return decision_output(d)


@workflow(name="news.daily_digest")
def digest_wf(
    ctx: Any,
    title: str = "Approve today's digest",
    timeout_s: float = 20 * 3600,
    on_timeout: str = "reject",
) -> dict[str, Any]:
    d = ctx.review(
        title,
        "Approve the digest for sending.",
        {
            "summary": "Five stories selected from 212 candidates.",
            "analyses": [
                {"title": "Story selection", "summary": "Balanced across regions.", "score": 81}
            ],
        },
        timeout=timedelta(seconds=timeout_s),
        on_timeout=on_timeout,
    )
    return decision_output(d)


@workflow(name="finance.payment_release")
def payment_release_wf(
    ctx: Any,
    title: str = "Release payment #7781 to Nordwind Logistics",
    timeout_s: float = 8 * 3600,
) -> dict[str, Any]:
    """A four-eyes gate: two people approve, and not the one who started the run."""
    d = ctx.review(
        title,
        "Check the amount and the bank details against the invoice. Two reviewers must approve.",
        {
            "summary": "Invoice INV-2291 matches the purchase order; the IBAN changed last week.",
            "amount": "EUR 48,250.00",
            "payee": "Nordwind Logistics GmbH",
            "analyses": [
                {
                    "title": "Amount matches the purchase order",
                    "finding": "PO-5512 and INV-2291 both total EUR 48,250.00.",
                    "confidence": 0.97,
                    "evidence": [{"quote": "Total due: EUR 48,250.00", "source": "INV-2291"}],
                },
                {
                    "title": "Bank details changed recently",
                    "finding": "The IBAN on the invoice differs from the one on file since 3 days.",
                    "confidence": 0.62,
                    "evidence": ["Please note our new bank account: DE89 3704 0044 0532 0130 00"],
                },
            ],
        },
        timeout=timedelta(seconds=timeout_s),
        on_timeout="reject",
        approvals=2,
        separation_of_duties=True,
        escalate_after=timedelta(hours=4),
        escalate_to="leads",
    )
    return decision_output(d) | {"approvals": list(d.approvals)}


# A booking with an undo, then a gate: canceling it while the gate is open compensates first.
BOOKED: list[str] = []


@step
def unbook(name: str, result: str) -> None:
    BOOKED.append(f"undo:{name}")


@step(compensate=unbook)
def book(name: str) -> str:
    BOOKED.append(f"do:{name}")
    return f"ref-{name}"


@workflow(name="test.saga_review")
def saga_review_wf(ctx: Any, approvals: int = 1) -> dict[str, Any]:
    ref = ctx.run(book, "flight")
    d = ctx.review(
        "Approve the booking", "", {"ref": ref}, approvals=approvals, timeout=timedelta(hours=1)
    )
    return decision_output(d)
