"""The gates router of the JSON API: services list open gates and decide them.

Deciding goes through ``reviews.services.decide_gate``, so the API follows the same race rules
as the browser: the first decision wins, a closed gate is a 409, an outcome outside the gate's
choices a 422. A key sees only gates of its tenant's runs, of the pipelines it may use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from pydantic import ConfigDict

from reviews import insights
from reviews.models import Gate
from reviews.schema import with_shown_values
from reviews.services import (
    GateClosedError,
    SeparationOfDutiesError,
    decide_gate,
    form_values,
)
from workflows.api import IsoDateTime, refuse_other_paging
from workflows.api_auth import (
    AUTH_ERRORS,
    BODY_ERRORS,
    NO_NUL,
    ApiError,
    api_key,
    errors,
    key_auth,
    not_found,
    parse_int,
)
from workflows.models import ApiKey
from workflows.timefmt import api_datetime

router = Router(tags=["gates"])


class ApprovalOut(Schema):
    by: str = Field(..., description="A username or api:<key prefix>.")
    at: datetime


class GateOut(Schema):
    id: int
    run_id: UUID
    step_id: int | None
    pipeline: str
    title: str
    instruction: str
    payload: Any = None
    choices: list[str]
    group: str
    status: str
    deadline: datetime | None
    claimed_by: str | None
    outcome: str | None
    comment: str
    edits: Any = None
    decided_by: str | None
    decided_at: datetime | None
    approvals_required: int = Field(1, description="Distinct approvers needed (four eyes).")
    approvals: list[ApprovalOut] = Field(
        default_factory=list, description="The approvals so far, oldest first."
    )
    separation_of_duties: bool = False
    escalate_to: str | None = None
    escalate_at: datetime | None = None
    escalated_at: datetime | None = None
    decision_url: str
    run_url: str


class DecisionIn(Schema):
    model_config = ConfigDict(extra="forbid")

    outcome: str = Field(
        ..., min_length=1, max_length=100, description="One of the gate's choices."
    )
    comment: str = Field("", max_length=10_000)
    edits: dict[str, Any] | None = Field(
        None, description="Corrections to the reviewed payload, if the gate accepts edits."
    )


def visible_gates(key: ApiKey) -> QuerySet[Gate]:
    qs = (
        Gate.objects.select_related("run", "claimed_by")
        .prefetch_related("approvals")
        .filter(run__tenant=key.tenant)
    )
    if key.pipelines:
        qs = qs.filter(run__workflow__in=key.pipelines)
    return qs


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def gate_out(gate: Gate) -> dict[str, Any]:
    return {
        "id": gate.pk,
        "run_id": gate.run_id,
        "step_id": getattr(gate, "step_id", None),
        "pipeline": getattr(gate, "pipeline", "") or gate.run.workflow,
        "title": gate.title or "",
        "instruction": getattr(gate, "instruction", "") or "",
        "payload": getattr(gate, "payload", None),
        "choices": list(getattr(gate, "choices", None) or []),
        "group": getattr(gate, "group", "") or "",
        "status": gate.status,
        "deadline": getattr(gate, "deadline", None),
        "claimed_by": _str_or_none(getattr(gate, "claimed_by", None)),
        "outcome": _str_or_none(getattr(gate, "outcome", None)),
        "comment": getattr(gate, "comment", "") or "",
        "edits": getattr(gate, "edits", None),
        "decided_by": _str_or_none(getattr(gate, "decided_by", None)),
        "decided_at": getattr(gate, "decided_at", None),
        "approvals_required": gate.approvals_required,
        "approvals": [{"by": a.approver, "at": a.at} for a in gate.approvals.all()]
        if gate.approvals_required > 1
        else [],
        "separation_of_duties": gate.separation_of_duties,
        "escalate_to": gate.escalate_to or None,
        "escalate_at": gate.escalate_at,
        "escalated_at": gate.escalated_at,
        "decision_url": f"/api/gates/{gate.pk}/decision",
        "run_url": f"/api/runs/{gate.run_id}",
    }


@router.get(
    "/gates",
    auth=key_auth("gates:decide", "runs:read"),
    response={200: list[GateOut], **errors(*AUTH_ERRORS, 422)},
    summary="List open gates",
)
def list_gates(
    request: HttpRequest,
    pipeline: str | None = Query(None, max_length=200, pattern=NO_NUL),
    limit: int = Query(100, ge=1, le=500),
) -> list[dict[str, Any]]:
    """Open gates this key may see, soonest deadline first: ``limit`` of them (default 100,
    at most 500). The list is not paged: ``offset`` and the like are a 422."""
    refuse_other_paging(
        request,
        "gates are not paged: ask for up to 500 with limit= (soonest deadline first)",
        "not paged; use limit (at most 500)",
    )
    qs = visible_gates(api_key(request)).filter(status="open")
    if pipeline:
        qs = qs.filter(run__workflow=pipeline)
    return [gate_out(g) for g in qs.order_by("deadline", "pk")[:limit]]


@router.post(
    "/gates/{gate_id}/decision",
    auth=key_auth("gates:decide"),
    response={200: GateOut, **errors(*AUTH_ERRORS, *BODY_ERRORS, 404, 409)},
    summary="Decide a gate",
)
def decide(request: HttpRequest, gate_id: str, body: DecisionIn) -> dict[str, Any]:
    """Approve, reject (or any of the gate's choices) with a comment and optional edits.

    The first decision wins: deciding a gate that is already decided, expired or canceled is a
    409. The decision is recorded as made by ``api:<key prefix>``.

    A gate that needs several approvals (``approvals_required``) stays open after an approval
    that is not the last one: the answer lists ``approvals`` so far, and the same key approving
    again counts once. On a gate with ``separation_of_duties``, the key that started the run
    may not approve it (403).
    """
    key = api_key(request)
    gate = visible_gates(key).filter(pk=parse_int(gate_id, "gate")).first()
    if gate is None:
        raise not_found("gate")
    # A field the request leaves out keeps what the gate's form shows for it (the AI's value,
    # a pipeline's pre-fill, or on a four-eyes gate the first approver's correction) when that
    # is a valid value of the field: "not edited", not "cleared" (the browser sends every field).
    edits = with_shown_values(
        gate.fields_schema or {}, gate.payload, body.edits, shown=form_values(gate).values
    )
    try:
        decided = decide_gate(
            gate.pk, outcome=body.outcome, comment=body.comment, edits=edits, actor=key.actor
        )
    except SeparationOfDutiesError as exc:
        raise ApiError(403, "forbidden", str(exc)) from None
    except GateClosedError as exc:
        # The message says who and when in words for people (a local time); a service gets
        # the facts too: how the gate closed, with what outcome, by whom, when (ISO 8601).
        closed = exc.gate
        details = None
        if closed is not None:
            details = {
                "status": str(closed.status),
                "outcome": closed.outcome or None,
                "decided_by": closed.decided_by or None,
                "decided_at": api_datetime(closed.decided_at),
            }
        raise ApiError(409, "conflict", str(exc), details) from None
    decided = visible_gates(key).get(pk=decided.pk)
    return gate_out(decided)


class DatasetLine(Schema):
    """One line of the evaluation dataset: a decided or expired gate."""

    gate_id: int
    run_id: UUID
    generation: int = Field(..., description="The run's generation when the gate was read.")
    pipeline: str
    gate: str = Field(..., description="The gate's title: its kind within the pipeline.")
    input: Any = Field(None, description="The run's input.")
    ai_output: Any = Field(None, description="What the reviewer was shown (the gate payload).")
    human_output: Any = Field(
        None,
        description="The payload with the reviewer's edits applied (an object payload gets the "
        "edited fields replaced); the payload itself when nothing was edited or the gate expired.",
    )
    edits: Any = Field(None, description="The edited fields as submitted, or null.")
    outcome: str = Field(..., description="The decision (approve, reject, …) or 'expired'.")
    decision: str = Field(..., description="The outcome the run received (the default if expired).")
    comment: str
    reviewer: str | None = Field(
        None, description="A username or an API key's name; null when the gate expired."
    )
    decided_by: str | None = Field(None, description="A username or api:<key prefix>.")
    opened_at: datetime | None
    decided_at: datetime | None
    seconds_to_decision: float | None


DATASET_DOC = {
    "responses": {
        "200": {
            "description": "JSON Lines: one DatasetLine object per line, streamed.",
            "content": {
                "application/jsonl": {"schema": {"$ref": "#/components/schemas/DatasetLine"}}
            },
        }
    }
}


@router.get(
    "/gates/dataset",
    auth=key_auth("runs:read"),
    response={200: DatasetLine, **errors(*AUTH_ERRORS, 422)},
    openapi_extra=DATASET_DOC,
    summary="Export decided gates as a JSONL evaluation dataset",
)
def dataset(
    request: HttpRequest,
    pipeline: str | None = Query(None, max_length=200, pattern=NO_NUL),
    gate: str | None = Query(
        None, max_length=200, pattern=NO_NUL, description="Only gates with this title."
    ),
    since: IsoDateTime | None = Query(None, description="Decided at or after (ISO 8601)."),
    until: IsoDateTime | None = Query(None, description="Decided before (ISO 8601)."),
    limit: int | None = Query(None, ge=1, le=10_000_000),
) -> StreamingHttpResponse:
    """Every decided or expired gate this key may see, as JSON Lines (``application/jsonl``),
    in gate order: the run's input, the AI's output, the output as the reviewer corrected it,
    the outcome, the reviewer and the timings. Streamed in chunks: any size can be exported.

    Needs the ``runs:read`` scope (the lines carry run inputs); a key sees its own tenant's
    gates of the pipelines it may use. Use it to measure a prompt or model change against
    human judgement (docs/reviews.md).
    """
    if since is not None and until is not None and since >= until:
        raise ApiError(
            422,
            "invalid_request",
            "since must be before until",
            [{"field": "since", "location": "query", "message": "must be before until"}],
        )
    key = api_key(request)
    qs = Gate.objects.filter(run__tenant=key.tenant)
    if key.pipelines:
        qs = qs.filter(pipeline__in=key.pipelines)
    qs = insights.dataset_gates(qs, pipeline=pipeline or "", since=since, until=until)
    if gate:
        qs = qs.filter(title=gate)
    return StreamingHttpResponse(
        insights.jsonl(insights.dataset_rows(qs, limit=limit)), content_type="application/jsonl"
    )
