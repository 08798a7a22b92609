"""Pipeline pages: the list (with graphs), the "Start run" form, and a run's live graph (JSON).

Thin adapters: read the registry, parse the form, call ``workflows.start``, format.

Access (docs/security.md): the list is for users who may use the run pages at all (else 403);
the start form, and its buttons on the list, only for holders of the ``workflows.start_run``
permission (else 403); a run's graph follows the run visibility rule of ``workflows.access``
(404 outside it). A run started here gets the user's tenant and username.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from pipelines import forms
from pipelines.llm.tasks import OFFLINE_NOTE, models_for_pipeline
from pipelines.machine import MachineError
from pipelines.registry import get_pipeline, mermaid_for_run, pipelines
from workflows import (
    IdempotencyConflict,
    InvalidInputError,
    RunNotFoundError,
    access,
    get_run,
    start,
)
from workflows.core.definitions import WorkflowDef
from workflows.core.services import validate_input


def _card(definition: WorkflowDef) -> dict[str, Any]:
    models = models_for_pipeline(definition.name)
    return {
        "name": definition.name,
        "title": definition.extra.get("title") or definition.name,
        "version": definition.version,
        "kind": definition.extra.get("kind", "code"),
        "description": definition.description,
        "mermaid": definition.extra.get("mermaid", ""),
        "models": models,
        "offline": "offline" in models,
        "offline_note": OFFLINE_NOTE,
    }


@login_required
@require_GET
def pipeline_list(request: HttpRequest) -> HttpResponse:
    if not access.can_use_run_pages(request.user):
        raise PermissionDenied(
            "Pipelines are for staff, reviewers and users who may start runs; "
            "ask an administrator to add you to a group."
        )
    cards = [_card(d) for d in pipelines()]
    context = {
        "nav": "pipelines",
        "pipelines": cards,
        "can_start": access.can_start_runs(request.user),
    }
    return render(request, "pipelines/list.html", context)


START_DENIED = (
    "Starting runs needs the “Can start runs from the web” permission (workflows.start_run); "
    "ask an administrator to grant it to you or to one of your groups."
)


@login_required
@require_http_methods(["GET", "POST"])
def start_run(request: HttpRequest, name: str) -> HttpResponse:
    """GET: the form, prefilled with the sample input. POST: start the run, or show errors.

    The form carries an idempotency key made when it was shown, so a double submit (or a
    browser resubmitting after "back") returns the run already started instead of a second one.
    """
    if not access.can_start_runs(request.user):
        raise PermissionDenied(START_DENIED)
    definition = get_pipeline(name)
    if definition is None:
        raise Http404(f"no pipeline called {name!r}")
    schema = definition.input_schema()
    values: Any = definition.extra.get("sample_input") or {}
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    budget_raw, budget_error = "", ""
    timeout_raw, timeout_unit, timeout_error = "", "hours", ""
    form_key = uuid.uuid4().hex
    if request.method == "POST":
        values, errors = forms.parse_post(schema, request.POST)
        budget_raw = request.POST.get("max_cost", "")
        budget, budget_error = forms.parse_budget(budget_raw)
        timeout_raw = request.POST.get("review_timeout", "")[:40]
        timeout_unit = request.POST.get("review_timeout_unit", "hours")
        if timeout_unit not in forms.REVIEW_TIMEOUT_UNITS:
            timeout_unit = "hours"
        review_timeout, timeout_error = forms.parse_review_timeout(timeout_raw, timeout_unit)
        posted_key = request.POST.get("form_key", "")
        form_key = posted_key if re.fullmatch(r"[0-9a-f]{32}", posted_key) else form_key
        try:
            if errors:
                raise InvalidInputError("the form has errors")
            # Validated here as well as in start(), so a bad budget shows with the rest.
            validate_input(name, values)
            if not budget_error and not timeout_error:
                run = start(
                    name,
                    values,
                    idempotency_key=f"form:{request.user.pk}:{form_key}",
                    tenant=access.user_tenant(request.user),
                    created_by=request.user.get_username(),
                    created_by_user_id=request.user.pk,
                    max_cost=budget,
                    review_timeout=review_timeout,
                )
                return redirect(f"/runs/{run.pk}/")
        except InvalidInputError as exc:
            if exc.errors:
                errors, general = forms.attach_errors(exc.errors)
            elif not errors:
                general = [str(exc)]
        except IdempotencyConflict as exc:
            # This form already started a run, with other values (edited after "back") or for
            # another pipeline. Not a second run behind the user's back: say so, and give the
            # form a new key, so that submitting it again starts one.
            form_key = uuid.uuid4().hex
            general = [
                f"This form already started run {exc.run_id} with other values. "
                "Submit it again to start a new run with these."
            ]
    fields = forms.build_fields(schema, values, errors)
    general += forms.unplaced(errors, fields)
    status = 400 if (errors or general or budget_error or timeout_error) else 200
    context = {
        "nav": "pipelines",
        "pipeline": _card(definition),
        "fields": fields,
        "general_errors": general,
        "budget": budget_raw,
        "budget_error": budget_error,
        "review_timeout": timeout_raw,
        "review_timeout_unit": timeout_unit,
        "review_timeout_units": list(forms.REVIEW_TIMEOUT_UNITS),
        "review_timeout_error": timeout_error,
        "form_key": form_key,
        "has_errors": status == 400,
    }
    return render(request, "pipelines/start.html", context, status=status)


_MARK = re.compile(r"^\s*class (\S+) (visited|current|failed)$", re.M)


@login_required
@require_GET
def run_graph(request: HttpRequest, run_id: Any) -> JsonResponse:
    """A run's graph for live updates: ``{"mermaid", "status", "active", "current", ...}``."""
    try:
        run = get_run(run_id)
    except RunNotFoundError:
        raise Http404("no such run") from None
    pipeline = get_pipeline(run.workflow)
    if not access.can_view_run(request.user, run) or pipeline is None:
        raise Http404("no such run")
    try:
        text = mermaid_for_run(run)
        known = True
    except MachineError:
        # The run's machine version was removed (docs/pipelines.md): the run page draws the
        # current version's graph unmarked, and so does this.
        text, known = str(pipeline.extra.get("mermaid") or ""), False
    marks: dict[str, list[str]] = {"visited": [], "current": [], "failed": []}
    for ids, mark in _MARK.findall(text):
        marks[mark] += ids.split(",")
    return JsonResponse(
        {
            "run": str(run.pk),
            "workflow": run.workflow,
            "status": run.status,
            "active": not run.is_terminal,
            "mermaid": text,
            "marked": known,
            **marks,
        }
    )
