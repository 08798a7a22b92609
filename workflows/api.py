"""The runs and pipelines routers of the JSON API (assembled in ``config/api.py``).

Operations are thin: parse, check the key's tenant and pipelines, call one engine service
(``workflows.start``, ``cancel``, ``restart``, ``send_event``), format. Engine errors become
API errors in ``config/api.py``'s exception handlers (422, 409, 404, 413).

A key sees only its tenant's runs, and only of the pipelines it may use: anything else is a
404, exactly as if it did not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from uuid import UUID

import pydantic
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Field, Header, Query, Router, Schema, Status
from pydantic import AfterValidator, BeforeValidator, ConfigDict

from workflows import access, gateinfo, timeline
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
    parse_uuid,
)
from workflows.core import forking, services
from workflows.core.audit import MAX_REASON, Actor
from workflows.core.definitions import registered_workflows
from workflows.core.errors import IdempotencyConflict, InvalidInputError, UnknownWorkflowError
from workflows.core.jsonvalues import same_json
from workflows.core.payloads import stored
from workflows.models import ApiKey, Run, RunAudit, RunStatus, Step
from workflows.webhooks import CallbackUrlError, check_callback_url

runs_router = Router(tags=["runs"])
pipelines_router = Router(tags=["pipelines"])

READ = key_auth("runs:read")
WRITE = key_auth("runs:write")

_STATUS = "(pending|running|suspended|compensating|succeeded|failed|canceled)"
STATUS_LIST_PATTERN = f"^{_STATUS}(,{_STATUS})*$"


def _not_a_number(value: Any) -> Any:
    """pydantic reads a number as a Unix timestamp; a filter must be an ISO 8601 date-time."""
    number = isinstance(value, int | float)
    if isinstance(value, str):
        try:
            float(value)
            number = True
        except ValueError:
            pass
    if number:
        raise ValueError("expected an ISO 8601 date-time such as 2026-11-21T09:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """A filter is compared in UTC: a date-time that has no UTC equivalent (9999-12-31 at
    -14:00, 0001-01-01 at +14:00) is out of range, a 422 rather than an OverflowError."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date-time out of range: it has no UTC equivalent") from None


IsoDateTime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_in_utc)]


def _not_a_bool(value: Any) -> Any:
    """pydantic's lax mode reads ``true`` as 1: a journal position must be a number."""
    if isinstance(value, bool):
        raise ValueError("expected a journal position (an integer), not true or false")
    return value


Position = Annotated[int, pydantic.Field(ge=1, le=1_000_000), BeforeValidator(_not_a_bool)]

RunStatusName = Literal[
    "pending", "running", "suspended", "compensating", "succeeded", "failed", "canceled"
]


# --- schemas ----------------------------------------------------------------------------------


class RunCreateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(..., min_length=1, max_length=200, description="A pipeline's name.")
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The run's input; validated against the pipeline's "
        "input schema (see GET /api/pipelines).",
    )
    callback_url: str | None = Field(
        None, max_length=2000, description="POSTed the run summary when the run ends."
    )
    max_cost: Decimal | None = Field(
        None,
        ge=0,
        max_digits=14,
        decimal_places=6,
        description="Budget in dollars: the run stops before the next step once spent.",
    )
    review_timeout: float | str | None = Field(
        None,
        description="How long reviewers have to decide each gate of this run that sets no "
        "timeout of its own: seconds, or a duration such as '90m', '36h' or '7d'; from 1 minute "
        "to 30 days. Default: the pipeline's, 24 hours.",
        examples=["36h"],
    )


class GateBrief(Schema):
    id: int
    title: str
    step_id: int | None
    group: str
    choices: list[str]
    deadline: datetime | None
    claimed_by: str | None
    decision_url: str


class RunSummary(Schema):
    id: UUID
    pipeline: str
    version: int
    status: RunStatusName
    generation: int
    current_step: str = Field(description="The last step the run reached.")
    cost: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    url: str


class AuditEntry(Schema):
    action: Literal["cancel", "restart", "retry", "fork"]
    actor: str = Field(description="Who: user:<name>, admin:<name> or api:<key prefix>.")
    reason: str
    generation: int = Field(description="The generation the action ended or replaced.")
    from_step: int | None
    created_at: datetime


class GenerationCostOut(Schema):
    generation: int
    cost: float = Field(description="What the journal rows of this generation cost (USD).")
    run_total: float = Field(
        description="What the run had spent by the end of this generation, earlier ones "
        "included (USD): the amount its budget caps."
    )
    max_cost: float | None = Field(
        description="The budget this generation ran under: a cap on the run's total."
    )


class RunDetail(RunSummary):
    input: dict[str, Any]
    output: Any = Field(
        None, description="The result, when succeeded (null if large: see output_url)."
    )
    output_url: str | None
    error: dict[str, Any] | None
    max_cost: float | None
    review_timeout: int | None = Field(
        description="Seconds reviewers have for each gate; null means the default, 24 hours."
    )
    callback_url: str | None
    idempotency_key: str | None
    created_by: str
    open_gates: list[GateBrief]
    audit: list[AuditEntry] = Field(
        description="Who canceled, restarted, retried or forked the run, and why; oldest first."
    )
    forked_from: UUID | None = Field(
        description="The run this one was forked from (POST /api/runs/{id}/fork), if any."
    )
    forked_at_step: int | None = Field(
        description="The position from which this fork ran anew (earlier ones were reused)."
    )
    after_compensation: str | None = Field(
        description="While the run is compensating (running the undos of its completed "
        "steps): the status it ends with, failed or canceled. Null otherwise."
    )
    generations: list[GenerationCostOut] = Field(
        description="Cost per generation (a restart opens a new one), each with its budget."
    )
    links: dict[str, str]


class RunPage(Schema):
    items: list[RunSummary]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class StepOut(Schema):
    id: int
    position: int
    branch: int | None = Field(description="The branch of a parallel group (0-based), or null.")
    label: str
    kind: str
    name: str
    status: str
    pool: str
    attempt: int
    max_attempts: int
    generation: int
    superseded: bool
    started_at: datetime | None
    finished_at: datetime | None
    wake_at: datetime | None
    duration_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    cost: float
    usage: dict[str, Any] | None
    args: Any = None
    args_url: str | None
    result: Any = None
    result_url: str | None
    error: dict[str, Any] | None


class EventIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    payload: Any = None


class EventOut(Schema):
    id: int
    run_id: UUID
    name: str
    consumed: bool = Field(
        description="True when a waiting step took it at once; otherwise it "
        "is kept for the run's next wait of that name."
    )
    created_at: datetime


REASON = Field("", max_length=MAX_REASON, description="Why (kept in the run's audit trail).")


class CancelIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: str = REASON


class RestartIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: str = REASON

    from_step: Position | None = Field(
        None,
        description="Journal position to restart from (1-based); "
        "omitted: the first unfinished position (after the last finished one when the run "
        "failed between steps).",
    )
    only_failed_branches: bool = Field(
        False,
        description="When the restart position is a fan-out, re-run only its branches that did "
        "not succeed; the others keep their results.",
    )
    max_cost: Decimal | None = Field(
        None,
        ge=0,
        max_digits=14,
        decimal_places=6,
        description="A new budget in dollars for the run (e.g. to go on after BudgetExceeded); "
        "omitted: unchanged.",
    )


class ForkIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: str = REASON
    from_step: Position = Field(
        ...,
        description="The new run reuses the original's journal before this position (1-based) "
        "and runs from it on; 1 reuses nothing, one past the last position reuses all of it.",
    )


class PipelineOut(Schema):
    name: str
    version: int
    description: str
    input_schema: dict[str, Any]
    graph: str | None = Field(description="The pipeline's graph as mermaid text, if it has one.")
    sample_input: dict[str, Any] | None


# --- helpers ----------------------------------------------------------------------------------


def visible_runs(key: ApiKey) -> QuerySet[Run]:
    """The runs ``key`` may see: its tenant's, of the pipelines it may use."""
    qs = Run.objects.filter(tenant=key.tenant)
    if key.pipelines:
        qs = qs.filter(workflow__in=key.pipelines)
    return qs


def get_visible_run(key: ApiKey, run_id: str) -> Run:
    run = visible_runs(key).filter(pk=parse_uuid(run_id)).first()
    if run is None:
        raise not_found("run")
    return run


def namespaced_key(tenant: str, key: str) -> str:
    """Idempotency keys are per tenant: two tenants may both send ``req-42``."""
    return f"api:{len(tenant)}:{tenant}:{key}"


def public_key(run: Run) -> str | None:
    """The key as its client sent it: without ``namespaced_key``'s prefix. A key of another
    shape (set from Python, say ``api:order-7``) is shown as it is."""
    value = run.idempotency_key
    if value and value.startswith("api:"):
        parts = value.split(":", 2)
        if len(parts) == 3 and parts[1].isascii() and parts[1].isdigit():
            length = int(parts[1])
            if len(parts[2]) > length and parts[2][length] == ":":
                return parts[2][length + 1 :]
    return value


def value_link(run_id: Any, data: Any) -> tuple[Any, str | None]:
    """A journal value inline, or a link to it when it is stored out of row."""
    value, blob_id = stored(data)
    if blob_id is not None:
        return None, f"/api/runs/{run_id}/values/{blob_id}"
    return value, None


def run_summary(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "pipeline": run.workflow,
        "version": run.version,
        "status": run.status,
        "generation": run.generation,
        "current_step": run.current_step,
        "cost": float(run.cost or 0),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "url": f"/api/runs/{run.pk}",
    }


# What a key without ``runs:read`` is told of a run it acted on: who the run is and where it
# stands, nothing it holds (``answer``). A fresh start's answer also keeps what its request
# just sent.
_WRITER_SEES = frozenset(
    {"id", "pipeline", "version", "status", "generation", "created_at", "started_at"}
    | {"finished_at", "url", "links"}
)
_WRITER_SENT = frozenset({"input", "callback_url", "max_cost", "review_timeout"})
_WRITER_BLANKS: dict[str, Any] = {
    "input": {},
    "current_step": "",
    "cost": 0.0,
    "created_by": "",
    "open_gates": [],
    "audit": [],
    "generations": [],
}


def answer(request: HttpRequest, run: Run, *, fresh: bool = False) -> dict[str, Any]:
    """The run as a write (start, cancel, restart, fork) answers it. A key without
    ``runs:read`` may act on runs but not read them: it gets the run's id, status and links,
    not what it holds (input, output, error, current step, costs, callback URL, starter,
    gates, audit), which an Idempotency-Key retry of a start, or a cancel of another key's
    run, would otherwise hand it. A start's own answer keeps what it was just sent."""
    if api_key(request).has_scope("runs:read"):
        return run_detail(run, fresh=fresh)
    # Its gates, audit and costs are blanked below: not queried for (``fresh`` skips them).
    detail = run_detail(run, fresh=True)
    shown = _WRITER_SEES | _WRITER_SENT if fresh else _WRITER_SEES
    return {
        name: value if name in shown else _WRITER_BLANKS.get(name) for name, value in detail.items()
    }


def run_detail(run: Run, *, fresh: bool = False) -> dict[str, Any]:
    """The run as the API shows it. ``fresh``: the run was created by this very request, so it
    has no gates, audit entries or journal yet: their three queries are skipped (a start is
    the API's hottest path, W7 in docs/performance.md)."""
    output, output_url = value_link(run.pk, run.output)
    gates = [] if fresh else gateinfo.open_gates([run.pk]).get(run.pk, [])
    costs = (
        [timeline.GenerationCost(run.generation, Decimal(0), run.max_cost, current=True)]
        if fresh
        else timeline.generation_costs(run)
    )
    return {
        **run_summary(run),
        "input": run.input or {},
        "output": output,
        "output_url": output_url,
        "error": run.error,
        "max_cost": float(run.max_cost) if run.max_cost is not None else None,
        "review_timeout": (
            int(run.review_timeout.total_seconds()) if run.review_timeout is not None else None
        ),
        "callback_url": run.callback_url or None,
        "idempotency_key": public_key(run),
        "created_by": run.created_by,
        "forked_from": run.forked_from_id,
        "forked_at_step": run.forked_at_step,
        "open_gates": [{**g, "decision_url": f"/api/gates/{g['id']}/decision"} for g in gates],
        "audit": []
        if fresh
        else list(
            RunAudit.objects.filter(run=run).values(
                "action", "actor", "reason", "generation", "from_step", "created_at"
            )
        ),
        "after_compensation": (
            run.after_compensation or None if run.status == RunStatus.COMPENSATING else None
        ),
        "generations": [
            {
                "generation": g.generation,
                "cost": float(g.spent),
                "run_total": float(g.total),
                "max_cost": float(g.cap) if g.cap is not None else None,
            }
            for g in costs
        ],
        "links": {
            "self": f"/api/runs/{run.pk}",
            "steps": f"/api/runs/{run.pk}/steps",
            "page": f"/runs/{run.pk}/",
        },
    }


def step_out(row: Step) -> dict[str, Any]:
    args, args_url = value_link(row.run_id, row.args)
    # A run_workflow step's result is its child's output, stored among the child's values and
    # read through this run (access.value_of): a key that sees this run may not see the child.
    result, result_url = value_link(row.run_id, row.result)
    usage = row.usage if isinstance(row.usage, dict) else None
    duration = row.duration
    return {
        "id": row.pk,
        "position": row.position,
        "branch": row.branch if row.branch >= 0 else None,
        "label": row.label,
        "kind": row.kind,
        "name": row.name,
        "status": row.status,
        "pool": row.pool,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "generation": row.generation,
        "superseded": row.superseded,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "wake_at": row.wake_at,
        "duration_ms": round(duration * 1000, 3) if duration is not None else None,
        "input_tokens": _int((usage or {}).get("input_tokens")),
        "output_tokens": _int((usage or {}).get("output_tokens")),
        "cost": float(row.cost or 0),
        "usage": usage,
        "args": args,
        "args_url": args_url,
        "result": result,
        "result_url": result_url,
        "error": row.error,
    }


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _decode(cursor: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def _invalid_cursor() -> ApiError:
    return ApiError(
        422,
        "invalid_cursor",
        "the cursor is not one this API returned",
        [{"field": "cursor", "message": "invalid cursor", "type": "value_error"}],
    )


def encode_cursor(run: Run) -> str:
    return _encode([run.created_at.isoformat(), str(run.pk)])


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created, run_id = _decode(cursor)
        if not isinstance(created, str) or not isinstance(run_id, str):
            raise ValueError("not a position")
        at = datetime.fromisoformat(created)
        if timezone.is_naive(at):
            raise ValueError("naive timestamp")
        # A forged offset can put the moment outside the range of a UTC datetime.
        return at.astimezone(UTC), UUID(run_id)
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise _invalid_cursor() from None


def encode_step_cursor(row: Step) -> str:
    return _encode([row.position, row.branch, row.pk])


# What a journal cursor may hold: the columns' ranges (a forged number past them would fail
# in the database, a 500, rather than find nothing).
_STEP_CURSOR_RANGES = ((0, 2**31 - 1), (-1, 2**31 - 1), (0, 2**63 - 1))


def decode_step_cursor(cursor: str) -> tuple[int, int, int]:
    """The (position, branch, id) of the last journal row of the previous page."""
    try:
        values = _decode(cursor)
        if not isinstance(values, list) or len(values) != len(_STEP_CURSOR_RANGES):
            raise ValueError("not a journal position")
        for value, (low, high) in zip(values, _STEP_CURSOR_RANGES, strict=True):
            if type(value) is not int or not low <= value <= high:
                raise ValueError("not a journal position")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _invalid_cursor() from None
    position, branch, step_id = values
    return position, branch, step_id


def _same_request(run: Run, body: RunCreateIn) -> bool:
    """``body`` is the request that created ``run``: compared with what the run was started
    with, not what it has now (a restart may have given it a new budget)."""
    start_cap = (
        run.max_cost
        if run.generation == 1
        # generation 1's cap, as the audit entry of the action that ended it recorded it
        else run.audit.filter(generation=1)
        .order_by("created_at", "id")
        .values_list("max_cost", flat=True)
        .first()
    )
    max_cost = Decimal(start_cap) if start_cap is not None else None
    return (
        run.workflow == body.pipeline
        and same_json(run.input or {}, body.input)
        and (run.callback_url or None) == (body.callback_url or None)
        and max_cost == (Decimal(body.max_cost) if body.max_cost is not None else None)
        and run.review_timeout == _review_timeout(body)
    )


def _review_timeout(body: RunCreateIn) -> timedelta | None:
    """The body's ``review_timeout`` read, or a 422 naming the field."""
    try:
        return services.parse_review_timeout(body.review_timeout)
    except InvalidInputError as exc:
        raise ApiError(422, "invalid_review_timeout", str(exc), exc.errors) from None


# --- runs -------------------------------------------------------------------------------------


@runs_router.post(
    "/runs",
    auth=WRITE,
    response={200: RunDetail, 201: RunDetail, **errors(*AUTH_ERRORS, *BODY_ERRORS)},
    summary="Start a run",
)
def create_run(
    request: HttpRequest,
    body: RunCreateIn,
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", max_length=128, pattern=NO_NUL
    ),
) -> Status[dict[str, Any]]:
    """Start a run of ``pipeline`` with ``input``.

    With an ``Idempotency-Key`` header the same key and body again answer 200 with the same run;
    the same key with a different body is a 422.
    """
    key = api_key(request)
    if not key.allows_pipeline(body.pipeline):
        raise ApiError(
            403,
            "forbidden",
            f"this API key may not use pipeline {body.pipeline!r}",
            {"pipelines": key.pipelines},
        )
    if body.callback_url:
        try:
            check_callback_url(body.callback_url)
        except CallbackUrlError as exc:
            raise ApiError(
                422,
                "invalid_callback_url",
                str(exc),
                [{"field": "callback_url", "message": str(exc), "type": "value_error"}],
            ) from None
    review_timeout = _review_timeout(body)
    stored_key = namespaced_key(key.tenant, idempotency_key) if idempotency_key else None
    try:
        # A concurrent request with the same key may win the insert: this one then gets that
        # run as found (200), and checks it like any earlier run with the key, below.
        run, created = services.start_or_find(
            body.pipeline,
            body.input,
            idempotency_key=stored_key,
            tenant=key.tenant,
            created_by=key.actor,
            callback_url=body.callback_url or "",
            max_cost=body.max_cost,
            review_timeout=review_timeout,
        )
    except IdempotencyConflict as exc:
        # The same answer as a reused key with another body, below (the IETF Idempotency-Key
        # draft's 422 for a reused key with a different payload). Keys are the tenant's, so
        # the run may be one of a pipeline this key may not see: then its id is not named.
        shown = exc.run_id is not None and visible_runs(key).filter(pk=exc.run_id).exists()
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
            {"run_id": str(exc.run_id)} if shown else None,
        ) from None
    except UnknownWorkflowError as exc:
        raise ApiError(
            422,
            "unknown_pipeline",
            str(exc),
            [{"field": "pipeline", "message": "no pipeline has this name", "type": "value_error"}],
        ) from None
    status = 201 if created else 200
    if stored_key and not _same_request(run, body):
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
            {"run_id": str(run.pk)},
        )
    return Status(status, answer(request, run, fresh=created))


# Query parameters of other paging schemes, refused by name on GET /runs and /runs/{id}/steps.
OTHER_PAGING = ("offset", "page", "page_size", "per_page", "skip", "start")


def refuse_other_paging(request: HttpRequest, how: str, instead: str = "use cursor") -> None:
    """Ignored, a client paging by offset would read the first page again and again."""
    paging = [name for name in OTHER_PAGING if name in request.GET]
    if paging:
        raise ApiError(
            422,
            "invalid_request",
            f"{how}, not {paging[0]}=",
            [{"field": paging[0], "location": "query", "message": instead}],
        )


@runs_router.get(
    "/runs", auth=READ, response={200: RunPage, **errors(*AUTH_ERRORS, 422)}, summary="List runs"
)
def list_runs(
    request: HttpRequest,
    status: str | None = Query(
        None,
        max_length=200,
        pattern=STATUS_LIST_PATTERN,
        description="Comma-separated statuses, e.g. running,suspended.",
    ),
    pipeline: str | None = Query(None, max_length=200, pattern=NO_NUL),
    created_after: IsoDateTime | None = Query(None),
    created_before: IsoDateTime | None = Query(None),
    cursor: str | None = Query(None, max_length=500),
    limit: int = Query(50, ge=1, le=200),
) -> dict[str, Any]:
    """Newest first, ``limit`` at a time; follow ``next_cursor`` for more."""
    refuse_other_paging(request, "runs are paged with cursor= (the previous page's next_cursor)")
    qs = visible_runs(api_key(request))
    if status:  # The pattern admits only known statuses.
        qs = qs.filter(status__in=status.split(","))
    if pipeline:
        qs = qs.filter(workflow=pipeline)
    if created_after:
        qs = qs.filter(created_at__gte=created_after)
    if created_before:
        qs = qs.filter(created_at__lt=created_before)
    if cursor:
        at, run_id = decode_cursor(cursor)
        # created_at <= at first: the index condition (the OR alone is none: a scan from
        # the newest run down to the cursor, ~250 ms 200,000 runs deep).
        qs = qs.filter(created_at__lte=at).filter(
            Q(created_at__lt=at) | Q(created_at=at, id__lt=run_id)
        )
    rows = list(qs.order_by("-created_at", "-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [run_summary(r) for r in rows],
        "next_cursor": encode_cursor(rows[-1]) if more and rows else None,
    }


@runs_router.get(
    "/runs/{run_id}",
    auth=READ,
    response={200: RunDetail, **errors(*AUTH_ERRORS, 404)},
    summary="Get a run",
)
def get_run(request: HttpRequest, run_id: str) -> dict[str, Any]:
    """Status, current step, result or error, open gates and cost so far."""
    return run_detail(get_visible_run(api_key(request), run_id))


STEPS_DOC = {
    "responses": {
        200: {
            "headers": {
                "Link": {
                    "description": 'The next page, as <url>; rel="next" (RFC 8288); absent on '
                    "the last page.",
                    "schema": {"type": "string"},
                }
            }
        }
    }
}


@runs_router.get(
    "/runs/{run_id}/steps",
    auth=READ,
    response={200: list[StepOut], **errors(*AUTH_ERRORS, 404, 422)},
    openapi_extra=STEPS_DOC,
    summary="The run's journal",
)
def list_steps(
    request: HttpRequest,
    response: HttpResponse,
    run_id: str,
    include_superseded: bool = Query(False),
    cursor: str | None = Query(
        None, max_length=500, description="The cursor of the Link header's next page."
    ),
    limit: int = Query(100, ge=1, le=500),
) -> list[dict[str, Any]]:
    """One entry per step, timer, wait, fan-out group and branch, in journal order, ``limit``
    at a time: while there are more, the ``Link`` header names the next page
    (``rel="next"``). Values stored out of row are given as ``*_url`` links."""
    refuse_other_paging(
        request, "the journal is paged with cursor= (from the previous page's Link header)"
    )
    run = get_visible_run(api_key(request), run_id)
    rows = Step.objects.filter(run=run)
    if not include_superseded:
        rows = rows.filter(superseded=False)
    if cursor:
        position, branch, step_id = decode_step_cursor(cursor)
        # position >= first: the index condition of step_run_position (run, position).
        rows = rows.filter(position__gte=position).filter(
            Q(position__gt=position)
            | Q(position=position, branch__gt=branch)
            | Q(position=position, branch=branch, id__gt=step_id)
        )
    page = list(rows.order_by("position", "branch", "id")[: limit + 1])
    if len(page) > limit:
        page = page[:limit]
        query = {"cursor": encode_step_cursor(page[-1]), "limit": limit}
        if include_superseded:
            query["include_superseded"] = "true"
        # Absolute: requests and httpx follow response.links["next"]["url"] only as given.
        next_page = request.build_absolute_uri(f"{request.path}?{urlencode(query)}")
        response["Link"] = f'<{next_page}>; rel="next"'
    return [step_out(r) for r in page]


@runs_router.get(
    "/runs/{run_id}/values/{value_id}",
    auth=READ,
    response={200: Any, **errors(*AUTH_ERRORS, 404)},
    summary="A large value",
)
def get_value(request: HttpRequest, run_id: str, value_id: str) -> Any:
    """A journal value (argument, result or output) too large to show inline."""
    run = get_visible_run(api_key(request), run_id)
    blob = access.value_of(run, parse_int(value_id, "value"))
    if blob is None:
        raise not_found("value")
    return json.loads(blob.data)


@runs_router.post(
    "/runs/{run_id}/events",
    auth=WRITE,
    response={202: EventOut, **errors(*AUTH_ERRORS, *BODY_ERRORS, 404, 409)},
    summary="Send an event to a run",
)
def send_event(request: HttpRequest, run_id: str, body: EventIn) -> Status[dict[str, Any]]:
    """Deliver ``payload`` to the run's ``wait_for_event(name)``; kept until one consumes it."""
    run = get_visible_run(api_key(request), run_id)
    event = services.send_event(run.pk, body.name, body.payload)
    return Status(
        202,
        {
            "id": event.pk,
            "run_id": run.pk,
            "name": event.name,
            "consumed": event.consumed_by_id is not None,
            "created_at": event.created_at,
        },
    )


@runs_router.post(
    "/runs/{run_id}/cancel",
    auth=WRITE,
    response={200: RunDetail, **errors(*AUTH_ERRORS, *BODY_ERRORS, 404, 409)},
    summary="Cancel a run",
)
def cancel_run(request: HttpRequest, run_id: str, body: CancelIn | None = None) -> dict[str, Any]:
    """Cancel the run and its children. A run that already ended is a 409. The key and the
    optional ``reason`` are recorded in the run's audit trail."""
    key = api_key(request)
    run = get_visible_run(key, run_id)
    reason = body.reason if body else ""
    return answer(request, services.cancel(run.pk, reason, actor=Actor.of_key(key)))


@runs_router.post(
    "/runs/{run_id}/restart",
    auth=WRITE,
    response={200: RunDetail, **errors(*AUTH_ERRORS, *BODY_ERRORS, 404, 409)},
    summary="Restart a finished run",
)
def restart_run(request: HttpRequest, run_id: str, body: RestartIn | None = None) -> dict[str, Any]:
    """Run a finished run again from journal position ``from_step``, under a new generation.
    Earlier journal entries are kept; later ones are superseded (never deleted). Without a
    body (or ``from_step``) it resumes at the first unfinished position; a position past the
    journal is a 422. The key and the optional ``reason`` go into the run's audit trail."""
    key = api_key(request)
    run = get_visible_run(key, run_id)
    return answer(
        request,
        services.restart(
            run.pk,
            from_step=body.from_step if body else None,
            only_failed_branches=body.only_failed_branches if body else False,
            max_cost=body.max_cost if body else None,
            actor=Actor.of_key(key),
            reason=body.reason if body else "",
        ),
    )


@runs_router.post(
    "/runs/{run_id}/fork",
    auth=WRITE,
    response={201: RunDetail, **errors(*AUTH_ERRORS, *BODY_ERRORS, 404)},
    summary="Fork a run from a step",
)
def fork_run(request: HttpRequest, run_id: str, body: ForkIn) -> Status[dict[str, Any]]:
    """Start a new run of the same pipeline, version and input that reuses this run's journal
    before ``from_step`` (its results are not computed again) and runs from there on. The
    original is not changed; the key and the optional ``reason`` go into its audit trail. A
    position out of range, or one after a step that has not finished, is a 422."""
    key = api_key(request)
    run = get_visible_run(key, run_id)
    new = forking.fork(
        run.pk, from_step=body.from_step, actor=Actor.of_key(key), reason=body.reason
    )
    return Status(201, answer(request, new))


# --- pipelines --------------------------------------------------------------------------------


def pipeline_out(wf: Any) -> dict[str, Any]:
    try:
        schema = wf.input_schema()
    except Exception:  # A model pydantic cannot describe still lists, without a schema.
        schema = {}
    sample = wf.extra.get("sample_input")
    graph = wf.extra.get("mermaid")
    return {
        "name": wf.name,
        "version": wf.version,
        "description": wf.description or "",
        "input_schema": schema,
        "graph": str(graph) if graph else None,
        "sample_input": sample if isinstance(sample, dict) else None,
    }


@pipelines_router.get(
    "/pipelines",
    auth=key_auth(),
    response={200: list[PipelineOut], **errors(*AUTH_ERRORS)},
    summary="List pipelines",
)
def list_pipelines(request: HttpRequest) -> list[dict[str, Any]]:
    """Every pipeline this key may start: name, version, description, input JSON Schema and
    graph (mermaid text) when it has one."""
    key = api_key(request)
    defs = registered_workflows()
    return [pipeline_out(defs[name]) for name in sorted(defs) if key.allows_pipeline(name)]
