"""Read-only facts about review gates for the run pages, the ops overview and the runs API.

Gates belong to the reviews app, and the engine never imports it. These helpers read its
``Gate`` model through Django's app registry instead, and answer "no gates" when the reviews
app is not installed, so the workflows app keeps working on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.db.models import Count, Model, Q

OPEN = "open"


def gate_model() -> type[Model] | None:
    try:
        return apps.get_model("reviews", "Gate")
    except LookupError:
        return None


def brief(gate: Any) -> dict[str, Any]:
    """What a run page or a run's API representation shows of an open gate."""
    return {
        "id": gate.pk,
        "title": getattr(gate, "title", "") or "",
        "step_id": getattr(gate, "step_id", None),
        "group": getattr(gate, "group", "") or "",
        "choices": list(getattr(gate, "choices", None) or []),
        "deadline": getattr(gate, "deadline", None),
        "claimed_by": str(getattr(gate, "claimed_by", "") or "") or None,
    }


def open_gates(run_ids: Iterable[Any]) -> dict[Any, list[dict[str, Any]]]:
    """Open gates of these runs, by run id, soonest deadline first."""
    model = gate_model()
    found: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    ids = list(run_ids)
    if model is None or not ids:
        return found
    for gate in model.objects.filter(run_id__in=ids, status=OPEN).order_by("deadline", "pk"):  # type: ignore[attr-defined]
        found[gate.run_id].append(brief(gate))
    return found


def open_gate_counts(now: datetime) -> dict[str, int]:
    """How many gates are open, and how many of those expire within the hour."""
    model = gate_model()
    if model is None:
        return {"open": 0, "expiring_within_hour": 0, "overdue": 0}
    counts = model.objects.filter(status=OPEN).aggregate(  # type: ignore[attr-defined]
        open=Count("pk"),
        expiring_within_hour=Count(
            "pk", filter=Q(deadline__gte=now, deadline__lt=now + timedelta(hours=1))
        ),
        overdue=Count("pk", filter=Q(deadline__lt=now)),
    )
    return {name: int(n or 0) for name, n in counts.items()}
