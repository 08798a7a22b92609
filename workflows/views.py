"""Operator pages: the runs list (/runs/), a run's page (/runs/<id>/) and the ops overview
(/ops/).

Who sees which run is one rule, ``workflows.access`` (tenant, viewer groups, gate groups, the
starter; staff see all): a run outside it is a 404, and a user who may see no run page at all
gets 403. Only staff with change rights on runs act on them, through ``workflows.operations``
(the same functions the admin actions call); only staff see the ops overview, whose figures
cover every tenant. Pages refresh themselves with HTMX while something is still moving; once the
session ends, a refresh sends the tab to the login page (``config.login``) rather than pasting
the login page into the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.template import TemplateDoesNotExist
from django.template.loader import select_template
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from config.login import login_required
from workflows import access, charts, gateinfo, operations, ops, timeline
from workflows.core import clock, forking
from workflows.core.audit import Actor, reason_problem
from workflows.core.definitions import registered_workflows
from workflows.core.payloads import stored
from workflows.models import ACTIVE_RUN, Run, RunAction, RunStatus, Step, StepStatus

PAGE_SIZE = 50
# What a row of the runs list shows (templates/workflows/_runs_rows.html).
ROW_FIELDS = (
    "id",
    "status",
    "generation",
    "workflow",
    "version",
    "current_step",
    "created_at",
    "started_at",
    "finished_at",
    "cost",
    "created_by",
    "tenant",
)
# What the run page's child runs card shows of each.
CHILD_FIELDS = ("id", "workflow", "status", "created_at")
JOURNAL_LIMIT = 400
# A journal value (a step's arguments, result or error) is shown whole up to this many
# characters of indented JSON; a longer one shows its first VALUE_PREVIEW characters and a link
# to the whole (``step_value``). Inlined whole, 400 entries of 60 KB results made the page, and
# every live refresh of it, 8.5 MB.
VALUE_INLINE_LIMIT = 4096
VALUE_PREVIEW = 500
# The journal columns ``step_value`` serves.
STEP_VALUES = ("args", "result", "error")
# The restart and fork pickers list each position up to this many; past it, a number field.
PICKER_LIMIT = 200
STATUSES = [s.value for s in RunStatus]


# --- who may do what --------------------------------------------------------------------------


def can_view_runs(user: Any) -> bool:
    """May open the run pages at all (which runs they then see is ``access.visible_runs``)."""
    return access.can_use_run_pages(user)


def can_operate(user: Any) -> bool:
    return access.staff_with(user, "workflows.change_run")


def _require_viewer(request: HttpRequest) -> None:
    if not can_view_runs(request.user):
        raise PermissionDenied(
            "Run pages are for staff, reviewers and users who may start runs; "
            "ask an administrator to add you to a group."
        )


def _visible_run_or_404(request: HttpRequest, run_id: UUID) -> Run:
    """The run, or 404 when it does not exist or is outside what the user may see."""
    run = get_object_or_404(Run, pk=run_id)
    if not access.can_view_run(request.user, run):
        raise Http404("No such run.")
    return run


# --- runs list --------------------------------------------------------------------------------


def _filtered_runs(request: HttpRequest) -> tuple[Any, dict[str, str]]:
    params = {
        "status": request.GET.get("status", ""),
        "pipeline": request.GET.get("pipeline", ""),
        "q": request.GET.get("q", "").strip(),
    }
    qs = access.visible_runs(request.user)
    if params["status"] == "active":
        qs = qs.filter(status__in=ACTIVE_RUN)
    elif params["status"] in STATUSES:
        qs = qs.filter(status=params["status"])
    if params["pipeline"]:
        qs = qs.filter(workflow=params["pipeline"].replace("\x00", ""))
    if params["q"]:
        qs = _search(qs, params["q"].replace("\x00", ""))
    return qs.order_by("-created_at", "-id"), params


# Partial matches are looked for among this many of the newest runs a user sees: a substring
# has no index, and over a whole long history it is a scan (0.6 s at 1,000,000 runs).
SEARCH_DEPTH = 10_000


def _search(qs: Any, term: str) -> Any:
    """A run id, an idempotency key or a tenant, exactly, at any age (each has an index);
    else part of an idempotency key or a pipeline name, among the newest ``SEARCH_DEPTH``."""
    try:
        return qs.filter(pk=UUID(term))
    except ValueError:
        pass
    for exact in (qs.filter(idempotency_key=term), qs.filter(tenant=term)):
        # Asked in the list's order, not with exists(): a prepared statement's generic plan
        # of "tenant = $1 LIMIT 1" on a history of one tenant is a scan expecting an early
        # hit, and reads every run for a term that is no tenant.
        if exact.order_by("-created_at", "-id").values_list("pk", flat=True)[:1]:
            return exact
    newest = qs.order_by("-created_at", "-id").values_list("created_at", flat=True)
    floor = newest[SEARCH_DEPTH - 1 : SEARCH_DEPTH].first()
    if floor is not None:
        qs = qs.filter(created_at__gte=floor)
    return qs.filter(Q(idempotency_key__icontains=term) | Q(workflow__icontains=term))


class CappedPaginator(Paginator):
    """Counts at most ``PAGE_CAP`` pages' worth of runs: ``COUNT(*)`` over a million-run history
    reads every row, and nobody pages 200 pages deep (filters and search reach older runs).
    ``capped`` says the count stopped there."""

    PAGE_CAP = 200

    @property
    def count(self) -> int:  # type: ignore[override]
        if not hasattr(self, "_capped_count"):
            cap = self.per_page * self.PAGE_CAP
            # A QuerySet: a sliced count is COUNT over a LIMIT. Unordered: the order only made
            # the database sort the cap's rows to count them (~10 ms of 12 at 1,000,000 runs).
            runs: Any = self.object_list
            self._capped_count = runs.order_by()[: cap + 1].count()
        return min(self._capped_count, self.per_page * self.PAGE_CAP)

    @property
    def capped(self) -> bool:
        return self.count < self._capped_count


def _query_without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


@login_required
@require_GET
def runs_list(request: HttpRequest) -> HttpResponse:
    _require_viewer(request)
    qs, params = _filtered_runs(request)
    # The columns a row shows: a run's input, output and context may be 64 KB each.
    page = CappedPaginator(qs.only(*ROW_FIELDS), PAGE_SIZE).get_page(request.GET.get("page"))
    runs = list(page.object_list)
    visible = access.visible_runs(request.user)
    counts, estimated = ops.status_counts(visible)
    context = {
        "nav": "runs",
        "page": page,
        "runs": runs,
        "params": params,
        "counts": counts,
        "active_total": sum(counts.get(s, 0) for s in ACTIVE_RUN),
        "total": sum(counts.values()),
        "estimated": estimated,
        "statuses": STATUSES,
        # Registered pipelines and those of the newest runs: a DISTINCT over the whole history
        # reads every row.
        "pipelines": sorted(
            set(registered_workflows())
            | set(visible.order_by("-created_at").values_list("workflow", flat=True)[:2000])
        ),
        "live": any(r.status in ACTIVE_RUN for r in runs),
        "search_depth": SEARCH_DEPTH,
        "query": _query_without(request, "partial", "page"),
    }
    if request.headers.get("HX-Request") and request.GET.get("partial") == "rows":
        return render(request, "workflows/_runs_rows.html", context)
    return render(request, "workflows/runs.html", context)


# --- a run's page -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShownValue:
    """A journal value as its row shows it: indented JSON, whole or only its beginning
    (``cut``), and where the whole of it is."""

    text: str
    cut: bool
    url: str


def _shown_value(run_id: Any, step: Step, part: str) -> ShownValue:
    """``step``'s ``part`` column for its journal row, encoded no further than the row shows:
    a 60 KB result costs the page ``VALUE_PREVIEW`` characters, not 60 KB (nor the time to
    indent all of it)."""
    url = reverse("workflows:step-value", args=[run_id, step.pk, part])
    value, blob_id = stored(getattr(step, part))
    if blob_id is not None:  # stored out of row: only the link
        return ShownValue("", True, url)
    encoder = json.JSONEncoder(indent=2, sort_keys=True, default=str, ensure_ascii=False)
    parts: list[str] = []
    length = 0
    for chunk in encoder.iterencode(value):  # lazy: left as soon as the text is past the limit
        parts.append(chunk)
        length += len(chunk)
        if length > VALUE_INLINE_LIMIT:
            return ShownValue("".join(parts)[:VALUE_PREVIEW], True, url)
    return ShownValue("".join(parts), False, url)


def _show_values(run: Run, rows: list[Step]) -> None:
    """Give each journal row the values it shows (templates/workflows/_journal.html)."""
    for row in rows:
        if row.error:
            row.shown_error = _shown_value(run.pk, row, "error")  # type: ignore[attr-defined]
        elif row.result is not None and stored(row.result)[1] is None:
            row.shown_result = _shown_value(run.pk, row, "result")  # type: ignore[attr-defined]
            if row.args:
                row.shown_args = _shown_value(run.pk, row, "args")  # type: ignore[attr-defined]


def _graph(run: Run) -> tuple[str, bool]:
    """The pipeline's graph (mermaid text, with the run's states highlighted when the pipeline
    can) and whether the pipelines app's renderer template exists."""
    wf = registered_workflows().get(run.workflow)
    if wf is None:
        return "", False
    text = ""
    for_run = wf.extra.get("mermaid_for_run")
    if callable(for_run):
        try:
            text = str(for_run(run) or "")
        except Exception:  # A broken highlighter must not take the run page down.
            text = ""
    if not text and wf.extra.get("mermaid"):
        text = str(wf.extra["mermaid"])
    if not text:
        return "", False
    try:
        select_template(["pipelines/_graph.html"])
        return text, True
    except TemplateDoesNotExist:
        return text, False


def _run_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    steps = Step.objects.filter(run=run)
    live = steps.filter(superseded=False)
    # The journal table shows the values of the first JOURNAL_LIMIT entries; the timeline and
    # the pickers load only what they draw (a map over thousands of items stays a page).
    shown = list(steps.order_by("superseded", "position", "branch", "id")[: JOURNAL_LIMIT + 1])
    more = len(shown) > JOURNAL_LIMIT
    shown = shown[:JOURNAL_LIMIT]
    _show_values(run, shown)
    live_rows = [r for r in shown if not r.superseded]
    superseded = [r for r in shown if r.superseded]
    wf = registered_workflows().get(run.workflow)
    tl = timeline.for_run(run, live)
    # Undo entries are not places to restart from: a restart re-runs what they undid.
    restart_at = Q(branch__lt=0) & ~Q(kind="compensate")
    restartable = live.filter(restart_at)
    now = timezone.now()
    engine_now = clock.now()  # the rows' times below are written on the engine's clock
    counts = live.aggregate(
        total=Count("id"),
        positions=Count("id", filter=restart_at),
        last=Max("position", filter=restart_at),
        # For the "waiting for a worker" callout: steps a worker may take now (not held back
        # by the run's cap), steps running, and when anything of the run last moved.
        pending=Count("id", filter=Q(status=StepStatus.PENDING, held=False)),
        running=Count("id", filter=Q(status=StepStatus.RUNNING)),
        last_created=Max("created_at"),
        last_started=Max("started_at"),
        last_finished=Max("finished_at"),
    )
    last_position = counts["last"] or 0
    fork_upto = forking.last_forkable_in(live, compensating=run.status == RunStatus.COMPENSATING)
    # Thousands of positions make a list no one scrolls: a number field instead.
    typed = max(counts["positions"], fork_upto) > PICKER_LIMIT
    positions = (
        [] if typed else list(restartable.order_by("position").values_list("position", flat=True))
    )
    failed = operations.failed_position(run.pk) if run.status == "failed" else None
    return {
        "nav": "runs",
        "run": run,
        "wf": wf,
        "timeline": tl,
        "journal": live_rows,
        "journal_total": counts["total"],
        "journal_cut": more,
        "superseded": superseded,
        "gates": gateinfo.open_gates([run.pk]).get(run.pk, []),
        # What the side cards show: a child's input and output, a delivery's body and an
        # event's payload may each be 64 KB.
        "children": list(run.children.only(*CHILD_FIELDS).order_by("created_at")[:50]),
        "deliveries": list(run.webhook_deliveries.defer("payload").order_by("-created_at")[:10]),
        "events": list(
            run.events.only("id", "name", "created_at", "consumed_by").order_by("-id")[:20]
        ),
        "can_operate": can_operate(request.user),
        "positions": positions,
        "has_positions": last_position > 0,
        "fork_positions": range(1, fork_upto + 1),
        "fork_upto": fork_upto,
        "pickers_typed": typed,
        # Preselected: the failed step, else the last one (run it again, reuse the rest).
        "fork_default": min(fork_upto, failed or last_position or 1),
        "last_position": last_position,
        "failed_position": operations.retry_position(run.pk, failed),
        "generations": timeline.generation_costs(run),
        # The cost card: for a budget, or once the run was restarted (a cancel also opens a
        # generation, with nothing to compare).
        "shows_costs": run.max_cost is not None
        or (
            run.generation > 1
            and run.audit.filter(action__in=(RunAction.RESTART, RunAction.RETRY)).exists()
        ),
        "live": not run.is_terminal,
        "now": now,
        "unstarted": _unstarted(run, counts, engine_now),
        "sees_ops": access.sees_every_run(request.user),
        "duration": timeline.human_duration(
            ((run.finished_at or now) - run.started_at).total_seconds()
        )
        if run.started_at
        else "",
    }


def unstarted_after() -> timedelta:
    """How long work may wait for a worker before the run page says so: a minute, or four
    doorbell graces (what the ops overview counts as not picked up) if that is longer."""
    return timedelta(seconds=max(60.0, 4 * float(settings.SLUICE_DOORBELL_GRACE_SECONDS)))


def _unstarted(run: Run, counts: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """What the run page says when a live run has waited longer than ``unstarted_after`` for
    a worker: the run itself (rung, its lease free, not taken), or steps of it (pending, none
    running, nothing of the run started, finished or written since); None otherwise. ``now``
    is the engine's clock."""
    if run.is_terminal:
        return None
    cut = now - unstarted_after()
    since: datetime | None = None
    free = not run.lease_owner or (run.lease_expires_at is not None and run.lease_expires_at < now)
    if free and run.status == RunStatus.PENDING:
        # Not taken since it was started, or since an operator's restart or retry made it
        # pending again (its first start may be days old).
        since = run.created_at
        if run.generation > 1:
            since = (
                run.audit.filter(action__in=(RunAction.RESTART, RunAction.RETRY))
                .order_by("-created_at")
                .values_list("created_at", flat=True)
                .first()
            ) or run.wake_requested_at
    elif free and run.wake_requested_at is not None:
        since = run.wake_requested_at
    waiting_run = since is not None and since < cut
    moved = [counts[k] for k in ("last_created", "last_started", "last_finished") if counts[k]]
    steps = (
        counts["pending"]
        if counts["pending"] and not counts["running"] and all(t < cut for t in moved)
        else 0
    )
    if not waiting_run and not steps:
        return None
    return {
        "run": waiting_run,
        "steps": steps,
        "for": timeline.human_duration((now - since).total_seconds())
        if waiting_run and since
        else "",
        "after": timeline.human_duration(unstarted_after().total_seconds()),
    }


@login_required
@require_GET
def run_page(request: HttpRequest, run_id: UUID) -> HttpResponse:
    _require_viewer(request)
    run = _visible_run_or_404(request, run_id)
    context = _run_context(request, run)
    if request.headers.get("HX-Request") and request.GET.get("partial") == "live":
        return render(request, "workflows/_run_live.html", context)
    context["mermaid_text"], context["graph_template"] = _graph(run)
    # A restart just refused for its budget: the form shows again what was typed, with the
    # field marked invalid and why (once: the next view of the page has a fresh form).
    context["restart_form"] = request.session.pop(_restart_form_key(run.pk), None)
    return render(request, "workflows/run.html", context)


def _restart_form_key(run_id: Any) -> str:
    return f"sluice:restart-form:{run_id}"


class BudgetForm(forms.Form):
    """The restart form's optional new budget, checked as admin's restart form checks it:
    a number (not NaN or Infinity), 0 or more, that fits ``Run.max_cost``."""

    max_cost = forms.DecimalField(required=False, min_value=0, max_digits=14, decimal_places=6)


def _run_page_of(request: HttpRequest, run_id: UUID, action: str) -> str:
    return reverse("workflows:run", args=[run_id])


@login_required(page=_run_page_of)  # after logging in: the run's page, not a POST-only URL
@require_POST
def run_action(request: HttpRequest, run_id: UUID, action: str) -> HttpResponse:
    """Cancel, retry the failed step, restart from a step, or fork from a step; then back to
    the run page (a fork: on to the new run's page)."""
    if not can_operate(request.user):
        raise PermissionDenied("Only staff act on runs.")
    run = _visible_run_or_404(request, run_id)
    actor = Actor.of_user(request.user)
    reason = request.POST.get("reason", "")
    problem = reason_problem(reason) if action in ("cancel", "retry", "restart", "fork") else ""
    if problem:
        messages.error(request, f"Run {str(run.pk)[:8]}: {problem}")
        return HttpResponseRedirect(reverse("workflows:run", args=[run.pk]))
    if action == "cancel":
        outcome = operations.cancel_run(run.pk, actor, reason)
    elif action == "retry":
        outcome = operations.retry_failed_step(run.pk, actor, reason)
    elif action == "restart":
        try:
            position = int(request.POST.get("from_step", ""))
        except ValueError:
            position = 0
        if position < 1:
            messages.error(request, "Choose a journal position (1 or more) to restart from.")
            return HttpResponseRedirect(reverse("workflows:run", args=[run.pk]))
        budget = BudgetForm(request.POST)
        if not budget.is_valid():
            problems = " ".join(str(e) for e in budget.errors.get("max_cost", []))
            messages.error(request, f"Run {str(run.pk)[:8]}: new budget (max_cost): {problems}")
            # Back to the run page (no form page to re-post on reload), which fills the restart
            # form in again and marks the budget field (run_page).
            request.session[_restart_form_key(run.pk)] = {
                "from_step": str(position),
                "reason": reason[:2000],
                "max_cost": request.POST.get("max_cost", "").replace("\x00", "")[:40],
                "error": problems,
            }
            return HttpResponseRedirect(reverse("workflows:run", args=[run.pk]))
        outcome = operations.restart_run(
            run.pk, position, actor, reason, budget.cleaned_data.get("max_cost")
        )
    elif action == "fork":
        try:
            position = int(request.POST.get("from_step", ""))
        except ValueError:
            position = 0
        if position < 1:
            messages.error(request, "Choose a journal position (1 or more) to fork from.")
            return HttpResponseRedirect(reverse("workflows:run", args=[run.pk]))
        outcome = operations.fork_run(run.pk, position, actor, reason)
        if outcome.ok:  # on to the new run's page
            messages.success(request, f"Run {str(run.pk)[:8]}: {outcome.message}.")
            return HttpResponseRedirect(reverse("workflows:run", args=[outcome.run_id]))
    else:
        raise Http404("no such action")
    if outcome.ok:
        messages.success(request, f"Run {str(run.pk)[:8]}: {outcome.message}.")
    else:
        messages.error(request, f"Run {str(run.pk)[:8]}: {outcome.message}")
    return HttpResponseRedirect(reverse("workflows:run", args=[run.pk]))


@login_required
@require_GET
def run_value(request: HttpRequest, run_id: UUID, blob_id: int) -> HttpResponse:
    """A journal value too large to show inline, as JSON."""
    _require_viewer(request)
    run = _visible_run_or_404(request, run_id)
    blob = access.value_of(run, blob_id)
    if blob is None:
        raise Http404("no such value")
    return JsonResponse(json.loads(blob.data), safe=False, json_dumps_params={"indent": 2})


@login_required
@require_GET
def step_value(request: HttpRequest, run_id: UUID, step_id: int, part: str) -> HttpResponse:
    """The whole of a journal entry's arguments, result or error, as JSON: the run page shows
    a long one cut (``VALUE_INLINE_LIMIT``). The same rule as the run page: a run the user may
    not see is a 404, and so is an entry of another run."""
    _require_viewer(request)
    run = _visible_run_or_404(request, run_id)
    if part not in STEP_VALUES:
        raise Http404("no such value")
    found = list(Step.objects.filter(pk=step_id, run=run).values_list(part, flat=True)[:1])
    if not found:
        raise Http404("no such journal entry")
    value, blob_id = stored(found[0])
    if blob_id is not None:  # stored out of row: one of the run's values, or its child's output
        blob = access.value_of(run, blob_id)
        if blob is None:
            raise Http404("no such value")
        value = json.loads(blob.data)
    return JsonResponse(value, safe=False, json_dumps_params={"indent": 2})


# --- ops overview -----------------------------------------------------------------------------


@login_required
@require_GET
def ops_overview(request: HttpRequest) -> HttpResponse:
    if not access.sees_every_run(request.user):
        raise PermissionDenied("The ops overview is for operators (staff who may view runs).")
    data = ops.overview()
    hourly = data["hourly"]
    outcome_series = [
        charts.Series(name, charts.STATUS_COLORS[name], hourly["series"][name])
        for name in ("succeeded", "failed", "canceled")
    ]
    rate = charts.Series("failure rate", "#cf222e", hourly["failure_rate"])
    cost = data["cost"]
    cost_series = [
        charts.Series(name, charts.PALETTE[i % len(charts.PALETTE)], cost["values"][name])
        for i, name in enumerate(cost["pipelines"])
    ]
    status = data["status"]
    context = {
        "nav": "ops",
        **data,
        "throughput_svg": charts.stacked_columns(
            hourly["labels"],
            outcome_series,
            line=rate,
            label_every=3,
            aria="runs finished per hour, by outcome, with the failure rate",
        ),
        "throughput_legend": charts.legend(
            outcome_series, [("failure rate (right axis)", "#cf222e")]
        ),
        "latency_svg": charts.range_bars(
            [(p.name, p.p50, p.p95, p.samples) for p in data["pools"]],
            fmt=lambda s: timeline.human_duration(s) or "0 ms",
            aria="step latency per pool",
        ),
        "cost_svg": charts.stacked_columns(
            cost["labels"],
            cost_series,
            fmt=charts.money,
            label_every=2,
            aria="LLM cost per pipeline per day",
        ),
        "cost_legend": charts.legend(cost_series),
        "status_svg": charts.stacked_bar(
            [(s, status[s], charts.STATUS_COLORS[s]) for s in STATUSES],
            aria="runs by status",
        ),
        "status_colors": charts.STATUS_COLORS,
        "statuses": STATUSES,
        "retention_days": settings.SLUICE_RETENTION_DAYS,
    }
    if request.headers.get("HX-Request"):
        return render(request, "workflows/_ops_body.html", context)
    return render(request, "workflows/ops.html", context)
