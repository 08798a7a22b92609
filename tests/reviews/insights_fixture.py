"""A known history of closed gates for the insights tests: rows written directly (closed gates
with chosen timings), so the expected rates, medians and field counts can be worked out by hand.

The decision path that writes ``GateCorrection`` rows in production is tested on its own
(test_insights.py, through ``decide_gate``); here the rows are written the way it writes them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from reviews.models import Gate, GateCorrection, GateStatus
from reviews.schema import corrections
from workflows.models import Run, Step

FIELDS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "reply": {"type": "string"},
    },
}


def closed_gate(
    *,
    tenant: str = "acme",
    pipeline: str = "support",
    title: str = "Check the reply",
    group: str = "reviewers",
    status: str = GateStatus.DECIDED,
    outcome: str = "approve",
    payload: Any = None,
    edits: Any = None,
    opened: datetime | None = None,
    seconds: float = 60.0,
    decided_by: str = "ana",
    run_input: Any = None,
) -> Gate:
    """One closed gate (and its run and journal row), opened at ``opened`` and closed
    ``seconds`` later, with its corrections recorded as ``decide_gate`` records them."""
    opened = opened or timezone.now() - timedelta(days=1)
    payload = {"sentiment": "positive", "reply": "Thanks!"} if payload is None else payload
    run = Run.objects.create(
        workflow=pipeline,
        status="succeeded",
        tenant=tenant,
        input={"title": "Ticket"} if run_input is None else run_input,
    )
    step = Step.objects.create(run=run, position=0, kind="gate", name=title, status="succeeded")
    expired = status == GateStatus.EXPIRED
    gate = Gate.objects.create(
        run=run,
        step=step,
        pipeline=pipeline,
        title=title,
        payload=payload,
        choices=["approve", "reject"],
        on_timeout="approve",
        group=group,
        fields_schema=FIELDS,
        deadline=opened + timedelta(days=1),
        status=status,
        outcome=outcome,
        edits=None if expired else edits,
        decided_by="" if expired else decided_by,
        decided_at=opened + timedelta(seconds=seconds),
        timed_out=expired,
    )
    # created_at is auto_now_add: set the opening time afterwards.
    Gate.objects.filter(pk=gate.pk).update(created_at=opened)
    gate.refresh_from_db()
    if not expired:
        GateCorrection.objects.bulk_create(
            GateCorrection(
                gate=gate, field=n, before=b, after=a, at=opened + timedelta(seconds=seconds)
            )
            for n, b, a in corrections(FIELDS, payload, edits)
        )
    return gate


def known_history(tenant: str = "acme", group: str = "reviewers") -> dict[str, list[Gate]]:
    """Ten closed gates of ``support / Check the reply`` and two of ``news / Verify``:

    support / Check the reply (10): 4 approved as is (60, 120, 180, 240 s), 3 corrected
    (two change ``sentiment``, one changes ``sentiment`` and ``reply``; 300, 360, 420 s; one
    of them rejected), 1 rejected as is (600 s), 2 expired. Median of the 8 decisions:
    (240 + 300) / 2 = 270 s. Rates: approved 40 %, edited 30 %, rejected 10 %, expired 20 %.
    One approval re-sent the AI's own values (edits equal to the payload): not a correction.

    news / Verify (2): 1 approved (30 s), 1 expired.
    """
    kw: dict[str, Any] = {"tenant": tenant, "group": group}
    same = {"sentiment": "positive", "reply": "Thanks!"}
    support = [
        closed_gate(seconds=60, **kw),
        closed_gate(seconds=120, edits=same, **kw),
        closed_gate(seconds=180, **kw),
        closed_gate(seconds=240, **kw),
        closed_gate(seconds=300, edits={"sentiment": "negative"}, **kw),
        closed_gate(seconds=360, edits={"sentiment": "neutral"}, outcome="reject", **kw),
        closed_gate(
            seconds=420,
            edits={"sentiment": "negative", "reply": "Sorry about the delay <b>really</b>."},
            **kw,
        ),
        closed_gate(seconds=600, outcome="reject", **kw),
        closed_gate(status=GateStatus.EXPIRED, seconds=86400, **kw),
        closed_gate(status=GateStatus.EXPIRED, seconds=86400, **kw),
    ]
    news = [
        closed_gate(pipeline="news", title="Verify", seconds=30, **kw),
        closed_gate(pipeline="news", title="Verify", status=GateStatus.EXPIRED, **kw),
    ]
    return {"support": support, "news": news}
