"""The review insights page (/reviews/insights/) and its JSONL download.

Who sees what (docs/security.md): a gate operator (staff with ``reviews.view_gate``) sees every
tenant's gates; any other reviewer sees the gates they may open one by one
(``services.gates_visible_to``: their groups' gates, escalated ones included, on runs of their
tenant). The numbers are aggregates of exactly those gates, and the examples and the download
show only their values, so the page reveals nothing its viewer could not already open.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from reviews import insights, services
from reviews.views import reviewer_required, strict_styles
from workflows import charts
from workflows.timeline import human_duration


def _no_nul(value: str) -> None:
    # PostgreSQL refuses NUL characters in text: a 400 here, never a database error.
    if "\x00" in value:
        raise forms.ValidationError("must not contain NUL characters")


class FilterForm(forms.Form):
    pipeline = forms.CharField(required=False, max_length=200, validators=[_no_nul])
    kind = forms.CharField(required=False, max_length=200, validators=[_no_nul])
    period = forms.ChoiceField(
        required=False,
        choices=[(k, f"last {v} days") for k, v in insights.PERIODS.items()],
    )

    def filters(self) -> insights.Filters:
        data = self.cleaned_data
        return insights.Filters(
            pipeline=data.get("pipeline") or "",
            kind=data.get("kind") or "",
            period=data.get("period") or insights.DEFAULT_PERIOD,
        )


def _bad_filters(request: HttpRequest, form: FilterForm) -> HttpResponse:
    problems = "; ".join(
        f"{name}: {' '.join(str(e) for e in errs)}" for name, errs in form.errors.items()
    )
    return render(
        request,
        "400.html",
        {"exception": f"Invalid filter: {problems}."},
        status=400,
    )


def _charts(data: dict[str, Any]) -> dict[str, Any]:
    """The page's SVG charts (workflows.charts, as on the ops overview: no JavaScript)."""
    week = data["weekly"]
    series = [charts.Series(c, insights.COLORS[c], week["series"][c]) for c in insights.CLASSES]
    n = len(week["labels"])
    return {
        "trend_svg": charts.stacked_columns(
            week["labels"],
            series,
            line=charts.Series("edit rate", "#0969da", week["edit_rate"]),
            label_every=max(1, n // 13 + (1 if n % 13 else 0)) if n > 13 else 1,
            height=230,
            aria="closed gates per week by outcome, with the share of decisions that edited",
        ),
        "rows": [
            {
                "group": g,
                "bar": charts.stacked_bar(
                    [(c, g.counts[c], insights.COLORS[c]) for c in insights.CLASSES],
                    width=240,
                    height=14,
                    aria=f"outcomes of {g.pipeline} / {g.kind}",
                ),
                "median": human_duration(g.median_seconds) or "—",
            }
            for g in data["groups"]
        ],
        "overall_bar": charts.stacked_bar(
            [(c, data["overall"].counts[c], insights.COLORS[c]) for c in insights.CLASSES],
            aria="outcomes of every gate in view",
        ),
        "corrections": [
            {"stat": f, "examples": [_example(e) for e in f.examples]} for f in data["fields"]
        ],
    }


SHORT = 160


def as_text(value: Any) -> str:
    """A JSON value as a reviewer reads it: text as it is, anything else as JSON."""
    if value is None:
        return "(empty)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1)


def _clip(value: Any) -> dict[str, Any]:
    """The value's text, and a short form when it is long (the page shows the full text on
    demand, in a <details>). Both are escaped by the template: they are untrusted."""
    text = as_text(value)
    short = text if len(text) <= SHORT else text[: SHORT - 1].rstrip() + "…"
    return {"text": text, "short": short, "clipped": short != text}


def _example(e: insights.Example) -> dict[str, Any]:
    return {"before": _clip(e.before), "after": _clip(e.after), "at": e.at, "gate_id": e.gate_id}


@require_GET
@strict_styles
@reviewer_required
def insights_page(request: HttpRequest) -> HttpResponse:
    """Outcome rates, time to decision, the most corrected fields and the weekly trend."""
    form = FilterForm(request.GET)
    if not form.is_valid():
        return _bad_filters(request, form)
    filters = form.filters()
    data = insights.summary(services.gates_visible_to(request.user), filters)
    context: dict[str, Any] = {
        "nav": "insights",
        "form": form,
        **data,
        **_charts(data),
        "export_query": request.GET.urlencode(),
        "periods": list(insights.PERIODS.items()),
        "classes": [(c, insights.COLORS[c]) for c in insights.CLASSES],
    }
    return render(request, "reviews/insights.html", context)


@require_GET
@reviewer_required
def insights_export(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """The page's gates (same filters) as a JSONL evaluation dataset, streamed."""
    form = FilterForm(request.GET)
    if not form.is_valid():
        return _bad_filters(request, form)
    filters = form.filters()
    now = timezone.now()
    qs = insights.dataset_gates(
        services.gates_visible_to(request.user),
        pipeline=filters.pipeline,
        since=now - timedelta(days=filters.days),
    )
    if filters.kind:
        qs = qs.filter(title=filters.kind)
    response = StreamingHttpResponse(
        insights.jsonl(insights.dataset_rows(qs)), content_type="application/jsonl"
    )
    name = f"sluice-reviews-{now:%Y%m%d}.jsonl"
    response["Content-Disposition"] = f"attachment; filename={json.dumps(name)}"
    return response
