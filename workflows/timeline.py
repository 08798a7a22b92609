"""The run page's timeline: the journal arranged for people.

Each journal position becomes one entry; a fan-out group carries its branches, shown side by
side. Every entry knows where it sits on the run's time axis (as percentages), how long it
took, how many attempts it used and what it waits for, so the template only lays it out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from workflows.models import Run, Step

MAX_BRANCHES_SHOWN = 24
# A journal of thousands of positions is not drawn whole: the first FIRST_SHOWN positions (how
# the run began) and the latest ones up to MAX_ENTRIES_SHOWN (where it is, or how it ended),
# with the count of those between. A live run's page re-renders this every few seconds.
MAX_ENTRIES_SHOWN = 200
FIRST_SHOWN = 20
WAIT_KINDS = {"sleep", "event", "gate", "child"}


def human_duration(seconds: float | None) -> str:
    """``850 ms``, ``4.2 s``, ``3 min 05 s``, ``2 h 10 min``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


@dataclass
class Entry:
    """One journal row as the timeline shows it."""

    row: Step
    left: float = 0.0  # where it starts on the run's time axis, in percent
    width: float = 0.0  # how much of the axis it covers, in percent
    open_ended: bool = False  # still running or waiting: the bar reaches "now"
    duration: str = ""
    note: str = ""

    @property
    def display_name(self) -> str:
        """``map:fetch`` reads "fetch"; ``parallel:a,b`` reads "a · b"."""
        name = self.row.name
        if self.row.kind == "compensate":
            return f"undo: {name}"
        if self.row.kind == "parallel" and ":" in name:
            return name.split(":", 1)[1].replace(",", " · ")
        return name

    @property
    def group_kind(self) -> str:
        return "map" if self.row.name.startswith("map:") else "parallel"

    @property
    def is_wait(self) -> bool:
        return self.row.kind in WAIT_KINDS

    @property
    def retried(self) -> bool:
        return self.row.attempt > 1 or self.row.status == "retrying"

    @property
    def error_message(self) -> str:
        err = self.row.error if isinstance(self.row.error, dict) else {}
        if not err:
            return ""
        return f"{err.get('type', 'Error')}: {err.get('message', '')}"[:300]


@dataclass
class Item:
    """A position of the journal: a single entry, or a fan-out group and its branches."""

    entry: Entry
    branches: list[Entry] = field(default_factory=list)
    hidden: int = 0

    @property
    def is_group(self) -> bool:
        return self.entry.row.kind == "parallel"

    @property
    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for b in self.branches:
            counts[b.row.status] += 1
        return dict(counts)


@dataclass
class Timeline:
    items: list[Item]
    start: datetime | None
    end: datetime | None
    total: str
    ticks: list[tuple[float, str]]
    live: bool
    # Positions left out in the middle (MAX_ENTRIES_SHOWN): how many, their first and last
    # position, and the index in ``items`` the gap comes before.
    gap: int = 0
    gap_from: int = 0
    gap_to: int = 0
    gap_at: int = 0


def _note(row: Step, now: datetime) -> str:
    """What a person wants to know about an entry beyond its status."""
    if row.status == "retrying" and row.wake_at:
        wait = max(0.0, (row.wake_at - now).total_seconds())
        return f"attempt {row.attempt} of {row.max_attempts} failed; next in {human_duration(wait)}"
    if row.status == "pending" and row.kind in ("step", "branch"):
        return "held: the run's parallelism cap" if row.held else f"queued in pool {row.pool}"
    if row.status == "waiting":
        if row.kind == "sleep" and row.wake_at:
            return f"sleeping until {timezone.localtime(row.wake_at):%H:%M:%S}"
        if row.kind == "event":
            until = f" until {timezone.localtime(row.wake_at):%H:%M}" if row.wake_at else ""
            return f"waiting for event “{row.name}”{until}"
        if row.kind == "gate":
            return "waiting for a reviewer"
        if row.kind == "child":
            return "waiting for the child run"
        if row.kind == "parallel":
            return f"{row.remaining} branch(es) still running"
    if row.status == "succeeded" and isinstance(row.usage, dict) and row.usage.get("timed_out"):
        if row.kind == "gate":
            outcome = row.result.get("outcome") if isinstance(row.result, dict) else None
            return "auto-advanced on expiry" + (f" ({outcome})" if outcome else "")
        return "timed out; went on with the default"
    if row.attempt > 1 and row.status in ("succeeded", "failed"):
        return f"{row.status} on attempt {row.attempt} of {row.max_attempts}"
    return ""


def status_label(row: Step) -> str:
    """A journal row's status as people read it: a wait that went on because its deadline
    passed says so ("auto-advanced on expiry" for a gate) instead of a plain "succeeded"."""
    if row.status == "succeeded" and isinstance(row.usage, dict) and row.usage.get("timed_out"):
        return "auto-advanced on expiry" if row.kind == "gate" else "timed out"
    return str(row.status)


HIDDEN_KINDS = ("now", "random", "uuid", "patch")  # recorded values, not work: not drawn


@dataclass
class _Group:
    """What a fan-out group's drawing needs of all its branches (not only the ones shown)."""

    count: int
    first_start: datetime | None
    last_finish: datetime | None
    busy: bool  # a branch is running or retrying


def build(run: Run, journal: list[Step], now: datetime | None = None) -> Timeline:
    """Arrange the live journal of ``run`` (not superseded rows) for the timeline."""
    rows = [r for r in journal if not r.superseded and r.kind not in HIDDEN_KINDS]
    branches: dict[int, list[Step]] = defaultdict(list)
    heads: list[Step] = []
    for r in rows:
        (branches[r.position].append(r) if r.branch >= 0 else heads.append(r))
    groups = {
        position: _Group(
            count=len(group),
            first_start=min((b.started_at for b in group if b.started_at), default=None),
            last_finish=max((b.finished_at for b in group if b.finished_at), default=None),
            busy=any(b.status in ("running", "retrying") for b in group),
        )
        for position, group in branches.items()
    }
    for group in branches.values():
        group.sort(key=lambda r: r.branch)
        del group[MAX_BRANCHES_SHOWN:]
    heads.sort(key=lambda r: r.position)
    gap = max(0, len(heads) - MAX_ENTRIES_SHOWN)
    gap_from = heads[FIRST_SHOWN].position if gap else 0
    gap_to = heads[FIRST_SHOWN + gap - 1].position if gap else 0
    if gap:
        heads = heads[:FIRST_SHOWN] + heads[FIRST_SHOWN + gap :]
    first_start = min((r.started_at for r in rows if r.started_at), default=None)
    last_finish = max((r.finished_at for r in rows if r.finished_at), default=None)
    return _arrange(
        run, heads, branches, groups, first_start, last_finish, (gap, gap_from, gap_to), now
    )


def for_run(run: Run, live: QuerySet[Step], now: datetime | None = None) -> Timeline:
    """``build`` for the run page, from the database: the same timeline, but only the rows it
    draws are loaded (a run of 10,000 steps, or a map over 10,000 items, is polled every 2 s
    while live). ``live`` is the run's journal without superseded rows."""
    drawn = live.exclude(kind__in=HIDDEN_KINDS)
    span = drawn.aggregate(first=Min("started_at"), last=Max("finished_at"))
    heads_q = drawn.filter(branch__lt=0).defer("args", "result", "target")
    count = heads_q.count()
    gap = max(0, count - MAX_ENTRIES_SHOWN)
    heads, gap_from, gap_to = [], 0, 0
    if gap:
        # One row more at each end: the first and the last of the positions left out.
        first = list(heads_q.order_by("position")[: FIRST_SHOWN + 1])
        last = list(heads_q.order_by("-position")[: MAX_ENTRIES_SHOWN - FIRST_SHOWN + 1])[::-1]
        if len(first) > FIRST_SHOWN and last and first[-1].position <= last[0].position:
            heads = first[:FIRST_SHOWN] + last[1:]
            gap_from, gap_to = first[-1].position, last[0].position
        else:  # the journal shrank since it was counted (a restart superseded rows)
            gap = 0
    if not gap:
        heads = list(heads_q.order_by("position"))
    fanouts = [h.position for h in heads if h.kind == "parallel"]
    branches: dict[int, list[Step]] = defaultdict(list)
    groups: dict[int, _Group] = {}
    if fanouts:
        of_groups = drawn.filter(branch__gte=0, position__in=fanouts)
        for g in (
            of_groups.order_by()
            .values("position")
            .annotate(
                n=Count("id"),
                first=Min("started_at"),
                last=Max("finished_at"),
                busy=Count("id", filter=Q(status__in=("running", "retrying"))),
            )
        ):
            groups[g["position"]] = _Group(g["n"], g["first"], g["last"], g["busy"] > 0)
        # Branch numbers are a group's indexes (0..n-1): the first ones shown are these.
        for b in (
            of_groups.filter(branch__lt=MAX_BRANCHES_SHOWN)
            .defer("args", "result", "target")
            .order_by("position", "branch")
        ):
            branches[b.position].append(b)
    return _arrange(
        run, heads, branches, groups, span["first"], span["last"], (gap, gap_from, gap_to), now
    )


def _arrange(
    run: Run,
    heads: list[Step],
    branches: dict[int, list[Step]],
    groups: dict[int, _Group],
    first_start: datetime | None,
    last_finish: datetime | None,
    gap: tuple[int, int, int],
    now: datetime | None,
) -> Timeline:
    """The timeline of the ``heads`` drawn (in position order), each fan-out with its first
    branches (``branches``) and what all of its branches add up to (``groups``)."""
    now = now or timezone.now()
    starts = [s for s in (first_start, run.started_at or run.created_at) if s]
    start = min(starts) if starts else None
    live = not run.is_terminal
    end = run.finished_at or (now if live else (last_finish or start))
    if start and end and end < start:
        end = start
    span = (end - start).total_seconds() if start and end else 0.0

    def place(row: Step, axis_start: datetime | None = start, axis_span: float = span) -> Entry:
        """Position ``row`` on an axis (the run's, or its group's for a branch)."""
        entry = Entry(row=row, note=_note(row, now))
        begin = row.started_at
        finish = row.finished_at
        if begin is None:
            return entry
        if finish is None and row.status in ("running", "waiting", "retrying"):
            finish, entry.open_ended = (end or now), True
        if finish is None:
            return entry
        seconds = max(0.0, (finish - begin).total_seconds())
        entry.duration = human_duration(seconds) + (" so far" if entry.open_ended else "")
        if axis_span > 0 and axis_start is not None:
            offset = (begin - axis_start).total_seconds()
            entry.left = min(100.0, max(0.0, offset / axis_span * 100))
            entry.width = min(100.0 - entry.left, seconds / axis_span * 100)
        else:
            entry.left, entry.width = 0.0, 100.0
        entry.width = max(entry.width, 0.6)  # a sliver stays visible
        return entry

    items = []
    for head in heads:
        item = Item(entry=place(head))
        if head.kind == "parallel":
            group = groups.get(head.position) or _Group(0, None, None, False)
            # Branches are drawn against their group's own span, so they compare with each
            # other even when the run's span is dominated by a long wait.
            g_start = group.first_start or head.started_at
            g_end = head.finished_at or group.last_finish
            if not head.finished_at and group.busy:
                g_end = now
            g_span = (g_end - g_start).total_seconds() if g_start and g_end else 0.0
            shown = branches.get(head.position, [])
            item.branches = [place(b, g_start, g_span) for b in shown]
            item.hidden = max(0, group.count - len(shown))
        items.append(item)
    ticks = [(float(p), human_duration(span * p / 100) if p else "0") for p in (0, 25, 50, 75, 100)]
    return Timeline(
        items=items,
        start=start,
        end=end,
        total=human_duration(span),
        ticks=ticks,
        live=live,
        gap=gap[0],
        gap_from=gap[1],
        gap_to=gap[2],
        gap_at=FIRST_SHOWN if gap[0] else 0,
    )


def value_link(run_id: Any, data: Any) -> str | None:
    """The page link of a journal value stored out of row, or None if it is inline."""
    from workflows.core.payloads import stored

    _, blob_id = stored(data)
    return f"/runs/{run_id}/values/{blob_id}/" if blob_id is not None else None


@dataclass
class GenerationCost:
    """What one generation of a run spent, the run's spending up to its end (``total``) and
    the budget it ran under. A budget caps what the run spends in all, every generation
    counted (the engine checks ``run.cost``), so ``total``, not ``spent``, is held against it."""

    generation: int
    spent: Decimal
    cap: Decimal | None
    current: bool
    total: Decimal = Decimal(0)

    @property
    def over(self) -> bool:
        return self.cap is not None and self.total > self.cap


def generation_costs(run: Run) -> list[GenerationCost]:
    """Cost per generation: the journal rows' cost grouped by the generation that wrote them
    (superseded rows included), and the run's total up to each, against the cap it ran under.
    A restart may raise the cap; the audit entry of the action that ended a generation
    records the cap it had."""
    spent = {
        row["generation"]: Decimal(row["spent"] or 0)
        for row in Step.objects.filter(run=run)
        .values("generation")
        .annotate(spent=Sum("cost"))
        .order_by()
    }
    caps: dict[int, Decimal | None] = {}
    for generation, cap in run.audit.order_by("created_at", "id").values_list(
        "generation", "max_cost"
    ):
        caps.setdefault(generation, cap)
    rows, total = [], Decimal(0)
    for g in range(1, run.generation + 1):
        total += spent.get(g, Decimal(0))
        rows.append(
            GenerationCost(
                generation=g,
                spent=spent.get(g, Decimal(0)),
                cap=run.max_cost if g == run.generation else caps.get(g),
                current=g == run.generation,
                total=total,
            )
        )
    return rows
