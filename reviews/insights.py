"""What the humans teach the AI: review outcomes per pipeline and gate, the fields reviewers
correct most, and the decided gates as an evaluation dataset.

A gate's *kind* is its title within its pipeline ("Verify thread analysis"): the same review
step across runs. Each closed gate counts once, in one of five classes:

- ``expired``: nobody decided; the gate auto-advanced with its default;
- ``edited``: decided (any outcome) with at least one field changed (``GateCorrection`` rows);
- ``approved`` / ``rejected``: decided "approve" / "reject" without a change;
- ``other``: decided with another of the gate's choices, without a change.

Canceled gates (the run ended first) taught nothing and are left out.

Bounded by construction: every number is a ``GROUP BY`` in the database (per group, per week,
per field), the examples come from one windowed query, and the median time to decision is
PostgreSQL's ``percentile_cont`` (on SQLite, the embedded default, the median of the most recent
``MEDIAN_SAMPLE`` decisions). The page issues the same number of queries for ten gates as for a
million. The export streams in keyset-paginated chunks, so no more than ``CHUNK`` gates are in
memory at once.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Window,
)
from django.db.models.functions import RowNumber, TruncWeek
from django.utils import timezone

from reviews.models import Gate, GateCorrection, GateStatus
from reviews.schema import corrected_output
from workflows.models import ApiKey
from workflows.timefmt import api_datetime

CLASSES = ("approved", "edited", "rejected", "other", "expired")
COLORS = {
    "approved": "#2da44e",
    "edited": "#8250df",
    "rejected": "#cf222e",
    "other": "#6e7781",
    "expired": "#d4a72c",
}
PERIODS = {"7": 7, "30": 30, "90": 90, "365": 365}
DEFAULT_PERIOD = "90"
MEDIAN_SAMPLE = 5000
TOP_FIELDS = 8
EXAMPLES_PER_FIELD = 3
CHUNK = 500


class Median(Aggregate):
    """PostgreSQL's exact median of a duration, in seconds."""

    function = "PERCENTILE_CONT"
    name = "Median"
    template = (
        "%(function)s(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM (%(expressions)s)))%(filter)s"
    )
    output_field = FloatField()


def closed(qs: QuerySet[Gate]) -> QuerySet[Gate]:
    """The gates that taught something: decided or expired (not canceled)."""
    return qs.filter(status__in=(GateStatus.DECIDED, GateStatus.EXPIRED))


def _corrected() -> Exists:
    return Exists(GateCorrection.objects.filter(gate_id=OuterRef("pk")))


def _class_counts() -> dict[str, Any]:
    """``Count`` aggregates of the five classes (and the total), for ``.annotate``."""
    decided = Q(status=GateStatus.DECIDED)
    plain = decided & Q(was_corrected=False)
    return {
        "total": Count("id"),
        "expired": Count("id", filter=Q(status=GateStatus.EXPIRED)),
        "edited": Count("id", filter=decided & Q(was_corrected=True)),
        "approved": Count("id", filter=plain & Q(outcome="approve")),
        "rejected": Count("id", filter=plain & Q(outcome="reject")),
        "other": Count("id", filter=plain & ~Q(outcome__in=("approve", "reject"))),
    }


def _seconds() -> ExpressionWrapper:
    return ExpressionWrapper(F("decided_at") - F("created_at"), output_field=DurationField())


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


@dataclass
class Filters:
    pipeline: str = ""
    kind: str = ""
    period: str = DEFAULT_PERIOD

    @property
    def days(self) -> int:
        return PERIODS[self.period]

    def since(self, now: datetime) -> datetime:
        """The start of the period."""
        return now - timedelta(days=self.days)

    def apply(self, qs: QuerySet[Gate], now: datetime) -> QuerySet[Gate]:
        qs = closed(qs).filter(decided_at__gte=self.since(now))
        if self.pipeline:
            qs = qs.filter(pipeline=self.pipeline)
        if self.kind:
            qs = qs.filter(title=self.kind)
        return qs


@dataclass
class Group:
    """One (pipeline, gate kind) row of the page."""

    pipeline: str
    kind: str
    counts: dict[str, int]
    median_seconds: float | None = None

    @property
    def total(self) -> int:
        return self.counts["total"]

    def rate(self, name: str) -> float | None:
        return 100.0 * self.counts[name] / self.total if self.total else None

    @property
    def rates(self) -> dict[str, float | None]:
        return {c: self.rate(c) for c in CLASSES}


@dataclass
class Example:
    before: Any
    after: Any
    at: datetime
    gate_id: int


@dataclass
class FieldStat:
    pipeline: str
    kind: str
    name: str
    count: int
    # The share of the decided gates of that kind where reviewers changed this field.
    share: float | None
    examples: list[Example] = field(default_factory=list)


def groups(qs: QuerySet[Gate]) -> list[Group]:
    """Outcome counts and the median time to decision per (pipeline, gate kind): one query (two
    on SQLite, whose median comes from a bounded sample)."""
    annotations: dict[str, Any] = _class_counts()
    if on_postgres():
        annotations["median"] = Median(_seconds(), filter=Q(status=GateStatus.DECIDED))
    rows: list[dict[str, Any]] = [
        dict(r)
        for r in qs.annotate(was_corrected=_corrected())
        .values("pipeline", "title")
        .annotate(**annotations)
        .order_by()
    ]
    rows.sort(key=lambda r: (-r["total"], r["pipeline"], r["title"]))
    out = [
        Group(
            pipeline=r["pipeline"],
            kind=r["title"],
            counts={k: r[k] for k in ("total", *CLASSES)},
            median_seconds=r.get("median"),
        )
        for r in rows
    ]
    if not on_postgres():
        medians = sampled_medians(qs)
        for g in out:
            g.median_seconds = medians.get((g.pipeline, g.kind))
    return out


def sampled_medians(qs: QuerySet[Gate]) -> dict[tuple[str, str], float]:
    """Median seconds to decision per group over the most recent ``MEDIAN_SAMPLE`` decisions."""
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    recent = (
        qs.filter(status=GateStatus.DECIDED)
        .order_by("-decided_at", "-id")
        .values_list("pipeline", "title", "created_at", "decided_at")[:MEDIAN_SAMPLE]
    )
    for pipeline, title, opened, decided in recent:
        if decided is not None:
            durations[(pipeline, title)].append(max(0.0, (decided - opened).total_seconds()))
    return {k: statistics.median(v) for k, v in durations.items()}


def overall(rows: list[Group]) -> Group:
    """The totals of every group (its median is the groups' weighted by decisions, shown only
    when one group is in view: medians do not add up)."""
    counts = {k: sum(g.counts[k] for g in rows) for k in ("total", *CLASSES)}
    median = rows[0].median_seconds if len(rows) == 1 else None
    return Group(pipeline="", kind="", counts=counts, median_seconds=median)


def monday(moment: datetime) -> date:
    """The local date of the Monday of the week ``moment`` falls in."""
    day = timezone.localdate(moment)
    return day - timedelta(days=day.weekday())


def weekly(qs: QuerySet[Gate], now: datetime, since: datetime) -> dict[str, Any]:
    """Closed gates per week by class, oldest week first, with the edit rate: one query.

    The weeks are the local weeks (Monday first) from the one ``since`` falls in to the one
    ``now`` falls in, so that every gate of the period is in a column: counted back from this
    Monday in whole weeks, "last 90 days" lost up to six days the totals include."""
    first, last = monday(since), monday(now)
    weeks = max(1, (last - first).days // 7 + 1)
    starts = [first + timedelta(weeks=i) for i in range(weeks)]
    index = {d: i for i, d in enumerate(starts)}
    series = {c: [0] * weeks for c in CLASSES}
    rows = (
        qs.annotate(was_corrected=_corrected(), week=TruncWeek("decided_at"))
        .values("week")
        .annotate(**_class_counts())
        .order_by("week")
    )
    for r in rows:
        counts: dict[str, Any] = dict(r)
        week = counts["week"]
        day = timezone.localtime(week).date() if isinstance(week, datetime) else week
        i = index.get(day)
        if i is None:
            continue
        for c in CLASSES:
            series[c][i] += counts[c]
    totals = [sum(series[c][i] for c in CLASSES) for i in range(weeks)]
    edit_rate = [
        100.0 * series["edited"][i] / (totals[i] - series["expired"][i])
        if totals[i] - series["expired"][i]
        else float("nan")
        for i in range(weeks)
    ]
    return {
        "labels": [f"{d:%b %d}" for d in starts],
        "series": series,
        "edit_rate": edit_rate,
        "totals": totals,
    }


def top_fields(qs: QuerySet[Gate], rows: list[Group]) -> list[FieldStat]:
    """The fields reviewers changed most, with the latest before → after examples of each: two
    queries (the counts, then the examples of the top fields through a window function)."""
    corrections = GateCorrection.objects.filter(gate__in=qs.values("pk"))
    counted = list(
        corrections.values("gate__pipeline", "gate__title", "field")
        .annotate(n=Count("id"))
        .order_by("-n", "gate__pipeline", "gate__title", "field")[:TOP_FIELDS]
    )
    if not counted:
        return []
    decided = {(g.pipeline, g.kind): g.counts["total"] - g.counts["expired"] for g in rows}
    stats = {
        (r["gate__pipeline"], r["gate__title"], r["field"]): FieldStat(
            pipeline=r["gate__pipeline"],
            kind=r["gate__title"],
            name=r["field"],
            count=r["n"],
            share=(
                100.0 * r["n"] / decided[(r["gate__pipeline"], r["gate__title"])]
                if decided.get((r["gate__pipeline"], r["gate__title"]))
                else None
            ),
        )
        for r in counted
    }
    wanted = Q()
    for pipeline, kind, name in stats:
        wanted |= Q(gate__pipeline=pipeline, gate__title=kind, field=name)
    examples = (
        corrections.filter(wanted)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("gate__pipeline"), F("gate__title"), F("field")],
                order_by=[F("at").desc(), F("id").desc()],
            )
        )
        .filter(rank__lte=EXAMPLES_PER_FIELD)
        .values("gate__pipeline", "gate__title", "field", "before", "after", "at", "gate_id")
        .order_by("gate__pipeline", "gate__title", "field", "-at", "-id")
    )
    for e in examples:
        stat = stats.get((e["gate__pipeline"], e["gate__title"], e["field"]))
        if stat is not None:
            stat.examples.append(Example(e["before"], e["after"], e["at"], e["gate_id"]))
    return list(stats.values())


def choices(qs: QuerySet[Gate]) -> tuple[list[str], list[str]]:
    """The pipelines and gate kinds the viewer has closed gates of, for the filter menus."""
    pairs = list(closed(qs).values_list("pipeline", "title").distinct().order_by())
    return sorted({p for p, _ in pairs}), sorted({t for _, t in pairs})


def summary(
    visible: QuerySet[Gate], filters: Filters, now: datetime | None = None
) -> dict[str, Any]:
    """Everything the insights page shows, for the gates in ``visible`` (the viewer's scope)."""
    now = now or timezone.now()
    qs = filters.apply(visible, now)
    rows = groups(qs)
    pipelines, kinds = choices(visible)
    return {
        "now": now,
        "filters": filters,
        "groups": rows,
        "overall": overall(rows),
        "weekly": weekly(qs, now, since=filters.since(now)),
        "fields": top_fields(qs, rows),
        "pipelines": pipelines,
        "kinds": kinds,
    }


# --- the evaluation dataset ---------------------------------------------------------------------


def dataset_gates(
    visible: QuerySet[Gate],
    *,
    pipeline: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Gate]:
    qs = closed(visible)
    if pipeline:
        qs = qs.filter(pipeline=pipeline)
    if since is not None:
        qs = qs.filter(decided_at__gte=since)
    if until is not None:
        qs = qs.filter(decided_at__lt=until)
    return qs


DATASET_COLUMNS = (
    "pk",
    "run_id",
    "run__input",
    "run__generation",
    "pipeline",
    "title",
    "status",
    "outcome",
    "comment",
    "payload",
    "edits",
    "decided_by",
    "created_at",
    "decided_at",
    "timed_out",
)


def dataset_rows(qs: QuerySet[Gate], *, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """One record per gate of ``qs`` in gate order, read ``CHUNK`` gates at a time by keyset
    (``id > last``), so an export of 100,000 gates holds one chunk in memory, not all."""
    last = 0
    left = limit
    while left is None or left > 0:
        size = CHUNK if left is None else min(CHUNK, left)
        chunk = list(qs.filter(pk__gt=last).order_by("pk").values(*DATASET_COLUMNS)[:size])
        if not chunk:
            return
        names = _key_names(chunk)
        for row in chunk:
            yield record(row, names)
        last = chunk[-1]["pk"]
        if left is not None:
            left -= len(chunk)
        if len(chunk) < size:
            return


def _key_names(chunk: list[dict[str, Any]]) -> dict[str, str]:
    """The names of the API keys that decided gates of this chunk (one query per chunk)."""
    prefixes = {
        actor[4:]
        for row in chunk
        for actor in (row["decided_by"] or "").split(", ")
        if actor.startswith("api:")
    }
    if not prefixes:
        return {}
    return dict(ApiKey.objects.filter(prefix__in=prefixes).values_list("prefix", "name"))


def _reviewer(decided_by: str, names: dict[str, str]) -> str | None:
    """A username, or an API key's name (its ``api:<prefix>`` if the key is gone); several
    approvers of a four-eyes gate joined by ", "."""
    if not decided_by:
        return None
    out = []
    for actor in decided_by.split(", "):
        if actor.startswith("api:"):
            out.append(names.get(actor[4:], actor))
        else:
            out.append(actor)
    return ", ".join(out)


def record(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    expired = row["status"] == GateStatus.EXPIRED
    corrected = row["payload"] if expired else corrected_output(row["payload"], row["edits"])
    opened, decided = row["created_at"], row["decided_at"]
    return {
        "gate_id": row["pk"],
        "run_id": str(row["run_id"]),
        "generation": row["run__generation"],
        "pipeline": row["pipeline"],
        "gate": row["title"],
        "input": row["run__input"],
        "ai_output": row["payload"],
        "human_output": corrected,
        "edits": None if expired else row["edits"],
        "outcome": "expired" if expired else row["outcome"],
        "decision": row["outcome"],
        "comment": row["comment"],
        "reviewer": None if expired else _reviewer(row["decided_by"], names),
        "decided_by": row["decided_by"] or None,
        "opened_at": api_datetime(opened),
        "decided_at": api_datetime(decided),
        "seconds_to_decision": (
            round((decided - opened).total_seconds(), 3) if opened and decided else None
        ),
    }


def jsonl(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """JSON Lines: one compact JSON object and a newline per record (UTF-8, not ASCII-escaped)."""
    for rec in records:
        yield json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
