"""Template helpers of the reviewer pages: countdowns and short times (the JS keeps them live)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()


def remaining_text(seconds: float) -> str:
    """``3h 12m``, ``12m 04s``, ``42s``; the same format as reviews.js."""
    if seconds <= 0:
        return "due now"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


@register.filter
def countdown(deadline: datetime | None, now: datetime | None = None) -> str:
    if deadline is None:
        return ""
    return remaining_text((deadline - (now or timezone.now())).total_seconds())


@register.filter
def urgency(deadline: datetime | None, now: datetime | None = None) -> str:
    """``overdue``, ``soon`` (under 1 h), ``today`` (under 24 h) or ``later``, for colour."""
    if deadline is None:
        return "later"
    seconds = (deadline - (now or timezone.now())).total_seconds()
    if seconds <= 0:
        return "overdue"
    if seconds < 3600:
        return "soon"
    return "today" if seconds < 86400 else "later"


@register.filter
def short_time(moment: datetime | None) -> str:
    """``14:02`` today, ``3 May 14:02`` otherwise (local time)."""
    if moment is None:
        return ""
    local = timezone.localtime(moment)
    if local.date() == timezone.localdate():
        return local.strftime("%H:%M")
    return local.strftime("%-d %b %H:%M")


@register.filter
def short_id(value: Any) -> str:
    return str(value).split("-")[0][:8]


@register.filter
def pct(value: float | None) -> int:
    return 0 if value is None else max(0, min(100, round(value * 100)))


@register.filter
def took(start: datetime | None, end: datetime | None) -> str:
    """``under a minute``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    if start is None or end is None:
        return ""
    minutes = int((end - start).total_seconds() // 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@register.filter
def event_verb(kind: str) -> str:
    return {
        "opened": "opened the gate",
        "claimed": "claimed it",
        "released": "released it",
        "decided": "decided",
        "expired": "passed: auto-advanced with",
        "canceled": "ended: gate canceled",
        "approved": "approved",
        "escalated": "escalated it to",
        "reassigned": "handed it",
    }.get(kind, kind)


@register.filter
def system_actor(kind: str) -> str:
    """Who an event without a person was: the pipeline opened, the deadline expired…"""
    return {
        "opened": "Pipeline",
        "expired": "Deadline",
        "canceled": "Run",
        "escalated": "Deadline",
    }.get(kind, "System")


def json_text(value: Any) -> str:
    """A decided value as a person reads it: text as it is, anything else as JSON (``["x"]``,
    ``true``, ``null``), never Python's ``['x']``, ``True``, ``None``."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@register.filter
def edit_rows(gate: Any) -> list[tuple[str, str]]:
    """(field, value as text) of a decided gate's edits, in the order of the gate's fields
    (``reviews.schema.properties``: the pipeline's order, not the database's), then any other
    key. The template escapes both."""
    from reviews.schema import properties

    edits = getattr(gate, "edits", None)
    if not isinstance(edits, dict) or not edits:
        return []
    schema = getattr(gate, "fields_schema", None)
    order = list(properties(schema)) if isinstance(schema, dict) else []
    keys = [k for k in order if k in edits] + [k for k in edits if k not in order]
    return [(str(k), json_text(edits[k])) for k in keys]
