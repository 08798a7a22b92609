"""The ops overview's numbers: runs by status, throughput and failure rate per hour, step
latency and load per pool, open gates, and LLM cost per pipeline per day.

Nothing here reads the whole history on a request. The per-hour figures (runs finished by
outcome, runs started, LLM cost per pipeline) of an hour that has ended are counted once, the
first time the overview needs them, into ``HistoryHour`` rows; only the open hour (and, for
the "last 24 h" totals, the end of the hour before the chart's first) is counted live, from the
indexes on the runs' and steps' times. Latency percentiles come from the most recent finished
steps of each pool; the status counts are exact for active runs and the planner's estimates for
finished ones on a long history (a tenant's or a user's share of it: exact when small, else
split by its own newest runs).

Hours are UTC hours, keyed by their UTC start, whatever ``TIME_ZONE`` says; only their labels
and the day a cost falls on are local. Bucketed in local time, the two 02:00 hours of a
daylight-saving fall-back were one bucket (counted twice, and its second ``HistoryHour`` row
never matched, so it was counted again on every load), and a change to a zone with a half-hour
offset left every kept row off the new hour boundaries, summed beside its recount.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Substr, TruncHour
from django.utils import timezone

from workflows import gateinfo
from workflows.models import ACTIVE_RUN, HistoryHour, Pool, Run, RunStatus, Step, StepKind

# Each pool's latency percentiles come from its newest this many finished steps (among the
# newest 4x as many of all pools): a p95 of 1,000 durations is good to about a percentile,
# and the sample costs ~5 ms on a 10,000,000-row journal (20,000 rows cost ~35 ms).
LATENCY_SAMPLE = 1000
HOURS = 24
DAYS = 14
HOUR = timedelta(hours=1)
# An hour is counted for good this long after it ended: a run's or a step's time is set
# just before its transaction commits.
GRACE = timedelta(minutes=2)
OUTCOMES = ("succeeded", "failed", "canceled")


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_values[int(k)]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class PoolLoad:
    name: str
    running: int
    backlog: int  # pending steps a worker or a free slot of the pool would start
    retrying: int
    limit: int | None
    rate_limit: int | None
    rate_period: float
    p50: float = 0.0
    p95: float = 0.0
    samples: int = 0
    held: int = 0  # branches waiting for their own run's max_parallel, not for the pool

    @property
    def utilization(self) -> float | None:
        """Running steps as a percentage of the pool's concurrency limit."""
        if not self.limit:
            return None
        return min(100.0, 100.0 * self.running / self.limit)


# Above this many runs (the planner's own table estimate) the counts of finished runs are the
# planner's estimates: an exact GROUP BY reads every row, ~0.5 ms per 1,000 (50 ms at 100,000,
# 0.3 s at 1,000,000), and the list and the overview must answer within 100 ms.
ESTIMATE_ABOVE = 20_000
# A share of the runs (a tenant's, a user's) the planner reckons smaller than this is counted
# exactly: its rows are found through the tenant index, and the planner's guess for a share
# is the table's status mix applied to the share's size (a tenant with 5 succeeded runs was
# shown ≈1 failed and ≈1 canceled, the other tenants' mix). A larger share is split by the
# status mix of its own newest ``SHARE_SAMPLE`` finished runs.
EXACT_BELOW = 10_000
SHARE_SAMPLE = 2_000
FINISHED = tuple(s for s in RunStatus.values if s not in ACTIVE_RUN)


# The table's size and its status column's statistics (what the planner estimates from).
_STATS_SQL = """
SELECT c.reltuples::bigint, s.null_frac, s.n_distinct, s.most_common_vals::text::text[],
       s.most_common_freqs
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stats s
  ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'status'
WHERE c.oid = %s::regclass
"""


@dataclass
class _Stats:
    rows: int
    null_frac: float
    n_distinct: float
    common: dict[str, float]

    def estimate(self, status: str) -> int:
        """Rows of ``status`` as the planner reckons them: a common value's share, or an even
        part of what the common values leave."""
        if status in self.common:
            return round(self.common[status] * self.rows)
        distinct = self.n_distinct if self.n_distinct >= 0 else -self.n_distinct * self.rows
        others = distinct - len(self.common)
        rest = max(0.0, 1.0 - self.null_frac - sum(self.common.values()))
        return round(rest / others * self.rows) if others >= 1 else 0


def _stats() -> _Stats | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cur:
        cur.execute(_STATS_SQL, [connection.ops.quote_name(Run._meta.db_table)])
        row = cur.fetchone()
    if not row:
        return None
    rows, null_frac, n_distinct, values, freqs = row
    return _Stats(
        rows=max(0, int(rows or 0)),
        null_frac=float(null_frac or 0),
        n_distinct=float(n_distinct or 0),
        common=dict(zip(values or [], (float(f) for f in freqs or []), strict=False)),
    )


def _planned_rows(qs: QuerySet[Run]) -> int:
    """The planner's row estimate for ``qs`` (PostgreSQL's EXPLAIN, nothing is read)."""
    plan = json.loads(qs.only("pk").explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def status_counts(qs: QuerySet[Run] | None = None) -> tuple[dict[str, int], bool]:
    """Runs of ``qs`` (all runs by default) per status, and whether some are estimates.

    Active statuses are always counted exactly (the ``run_status_created`` index holds few of
    them). Finished statuses are counted exactly too, unless the table is past
    ``ESTIMATE_ABOVE`` rows: then, for all runs, they are the planner's estimates read from the
    column's statistics (one query), which keeps the ops overview fast at any history size.
    A share of the runs (``qs`` filtered: a tenant's, a user's) is never given the table's
    figures: it is counted exactly when the planner reckons it under ``EXACT_BELOW`` runs, and
    otherwise its size is the planner's and its split by status is that of its own newest
    ``SHARE_SAMPLE`` finished runs.
    """
    qs = Run.objects.all() if qs is None else qs
    counts = dict.fromkeys(RunStatus.values, 0)
    if qs.query.is_empty():
        return counts, False
    qs = qs.order_by()
    stats = _stats()
    estimated = stats is not None and stats.rows > ESTIMATE_ABOVE
    if estimated and qs.query.where:
        return _share_counts(qs, counts)
    exact = qs.filter(status__in=ACTIVE_RUN) if estimated else qs
    for row in exact.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    if stats is not None and estimated:
        for status in FINISHED:
            counts[status] = stats.estimate(status)
    return counts, estimated


def _share_counts(qs: QuerySet[Run], counts: dict[str, int]) -> tuple[dict[str, int], bool]:
    """``status_counts`` of a share of a long history (see there)."""
    planned = _planned_rows(qs)
    if planned < EXACT_BELOW:
        for row in qs.values("status").annotate(n=Count("id")):
            counts[row["status"]] = row["n"]
        return counts, False
    for row in qs.filter(status__in=ACTIVE_RUN).values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    sample = list(
        qs.filter(status__in=FINISHED)
        .order_by("-created_at")
        .values_list("status", flat=True)[:SHARE_SAMPLE]
    )
    mix = {s: sample.count(s) for s in FINISHED}
    if len(sample) < SHARE_SAMPLE:  # the sample is every finished run of the share
        counts.update(mix)
        return counts, False
    # The planner's size of the share, less its active runs (counted above), and no fewer
    # finished runs than the sample holds.
    finished = max(len(sample), planned - sum(counts[s] for s in ACTIVE_RUN))
    for status in FINISHED:
        counts[status] = round(finished * mix[status] / len(sample))
    return counts, True


def _utc_hour(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in (a UTC datetime)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _hours(first: datetime, last: datetime) -> list[datetime]:
    """The starts of the UTC hours from ``first``'s to ``last``'s (UTC datetimes: one key per
    real hour, so a daylight-saving change neither merges nor skips one)."""
    start = _utc_hour(first)
    count = int((_utc_hour(last) - start) / HOUR) + 1
    return [start + i * HOUR for i in range(count)]


def _labels(hours: list[datetime]) -> list[str]:
    """Each hour's local start, for the axis: "14", or "14:30" in a zone whose hours start at
    the half hour (the two hours of a fall-back both say "02", as the clock did)."""
    here = [timezone.localtime(h) for h in hours]
    fmt = "%H" if all(h.minute == 0 for h in here) else "%H:%M"
    return [h.strftime(fmt) for h in here]


@dataclass(slots=True)
class Hour:
    """An hour's figures (a ``HistoryHour`` row, or the open hour counted live)."""

    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    started: int = 0
    cost: dict[str, str] = field(default_factory=dict)  # {pipeline: decimal string}


def _count(since: datetime, until: datetime | None = None) -> dict[datetime, Hour]:
    """The figures of the UTC hours from ``since`` (to ``until``) that saw a run finish or
    start or a costed step finish, keyed by their UTC start: three grouped queries over the
    time indexes."""
    rows: dict[datetime, Hour] = defaultdict(Hour)

    def between(column: str) -> dict[str, datetime]:
        return {f"{column}__gte": since, **({f"{column}__lt": until} if until else {})}

    finished = (
        Run.objects.filter(**between("finished_at"))
        .annotate(hour=TruncHour("finished_at", tzinfo=UTC))
        .values_list("hour", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for hour, status, n in finished:
        if status in OUTCOMES:
            setattr(rows[hour.astimezone(UTC)], status, n)
    started = (
        Run.objects.filter(**between("created_at"))
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values_list("hour")
        .annotate(n=Count("id"))
        .order_by()
    )
    for hour, n in started:
        rows[hour.astimezone(UTC)].started = n
    costed = (
        # A child run's cost is also on its parent's waiting step: counted once, by its steps.
        Step.objects.filter(cost__gt=0, **between("finished_at"))
        .exclude(kind=StepKind.CHILD)
        .annotate(hour=TruncHour("finished_at", tzinfo=UTC))
        .values_list("hour", "run__workflow")
        .annotate(total=Sum("cost"))
        .order_by()
    )
    for hour, pipeline, total in costed:
        rows[hour.astimezone(UTC)].cost[pipeline] = str(total or Decimal(0))
    return dict(rows)


def history(hours: list[datetime], now: datetime) -> dict[datetime, Hour]:
    """The figures of each of ``hours`` (UTC hour starts, oldest first) that saw anything,
    keyed by those starts: the hours that ended from ``HistoryHour``, counted now (once) if
    they were not yet, and the open ones live.

    A kept row that is not one of ``hours`` (an hour of a local zone Sluice once bucketed
    by, such as 18:30 UTC from Asia/Kolkata) is ignored: its runs are in the hours that
    cover them, and adding it too counted them twice."""
    closed = [h for h in hours if h + HOUR + GRACE <= now]
    rows: dict[datetime, Hour] = {}
    if closed:
        wanted = set(closed)
        kept = HistoryHour.objects.filter(hour__gte=closed[0], hour__lte=closed[-1])
        for hour, ok, bad, canceled, started, cost in kept.values_list(
            "hour", "succeeded", "failed", "canceled", "started", "cost"
        ):
            if hour.astimezone(UTC) in wanted:
                rows[hour.astimezone(UTC)] = Hour(ok, bad, canceled, started, cost)
        missing = [h for h in closed if h not in rows]
        if missing:
            counted = _count(missing[0], missing[-1] + HOUR)
            new = {h: counted.get(h) or Hour() for h in missing}
            # Two overviews counting the same hour at once write the same figures.
            HistoryHour.objects.bulk_create(
                [HistoryHour(hour=h, **asdict(figures)) for h, figures in new.items()],
                ignore_conflicts=True,
            )
            rows.update(new)
    opened = hours[len(closed) :]
    if opened:
        rows.update(_count(opened[0]))
    return rows


def keep_pruned_hours(run_ids: list[Any], now: datetime | None = None) -> int:
    """Count into ``HistoryHour``, before retention deletes the runs ``run_ids``, the closed
    hours of the charts (``_two_weeks``) their rows are counted in: the hours they started and
    finished in and those their costed steps finished in. Returns the hours looked at.

    Called by the prune in the transaction that deletes the batch (``runs_pruning``), while
    every run of those hours is still there: written only when the overview asked for an hour,
    an hour nobody looked at before its runs were pruned was counted from an empty table, and
    kept as zero (a retention under the charts' 14 days lost those days' cost). An hour already
    kept is not counted again; one still open is the overview's, counted live. Hours older than
    the charts are not kept: nothing reads them."""
    now = now or timezone.now()
    charts = _two_weeks(now)[0]
    runs = Run.objects.filter(pk__in=run_ids).aggregate(
        first=Min("created_at"), last=Max("finished_at")
    )
    if runs["last"] is None or runs["last"] < charts:
        return 0  # the usual batch under a retention longer than the charts: one query
    steps = (
        Step.objects.filter(run_id__in=run_ids, cost__gt=0)
        .exclude(kind=StepKind.CHILD)
        .aggregate(first=Min("finished_at"), last=Max("finished_at"))
    )
    times = [t for t in (*runs.values(), *steps.values()) if t is not None]
    first, last = max(min(times), charts), max(times)
    if first > last:
        return 0
    closed = [h for h in _hours(first, last) if h + HOUR + GRACE <= now]
    if closed:
        history(closed, now)
    return len(closed)


def _two_weeks(now: datetime) -> list[datetime]:
    """The hours of the cost chart's 14 local days (the last 24 hours among them): every UTC
    hour that starts on one of those days, local time (in a half-hour zone the hour across
    midnight belongs to the day it starts on)."""
    first = timezone.localdate(now) - timedelta(days=DAYS - 1)
    midnight = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    start = _utc_hour(midnight)
    if start < midnight:
        start += HOUR
    return _hours(start, now)


def _before_first_hour(since: datetime, until: datetime) -> Hour:
    """Runs finished by outcome and started from ``since`` to ``until`` (at most an hour,
    counted live: two queries over the time indexes)."""
    tail = Hour()
    if since >= until:
        return tail
    finished = (
        Run.objects.filter(finished_at__gte=since, finished_at__lt=until, status__in=OUTCOMES)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for status, n in finished:
        setattr(tail, status, n)
    tail.started = Run.objects.filter(created_at__gte=since, created_at__lt=until).count()
    return tail


def hourly(now: datetime, rows: dict[datetime, Hour] | None = None) -> dict[str, Any]:
    """Runs finished per hour over the last 24 hours, by outcome, and the failure rate.
    ``rows``: ``history()`` of those hours or more (the overview shares one).

    The columns are the 24 clock hours up to the current one (23 whole and this one so far);
    the totals (``finished_24h``, ``started_24h``, ``failure_rate_24h``) are of exactly the last
    24 hours, as the recent failures are: the columns and the end of the hour before them (from
    ``now`` - 24 h), counted live. Summed from the columns alone, a run that failed 23 h 55 min
    ago was listed among the recent failures while the tile said 0 finished."""
    here = _utc_hour(now)
    hours = _hours(here - (HOURS - 1) * HOUR, here)
    rows = history(hours, now) if rows is None else rows
    series: dict[str, list[int]] = {s: [0] * HOURS for s in OUTCOMES}
    started = [0] * HOURS
    for i, hour in enumerate(hours):
        found = rows.get(hour)
        if found is not None:
            for outcome in OUTCOMES:
                series[outcome][i] = getattr(found, outcome)
            started[i] = found.started
    rate: list[float] = []
    for i in range(HOURS):
        ended = series["succeeded"][i] + series["failed"][i]
        rate.append(100.0 * series["failed"][i] / ended if ended else float("nan"))
    tail = _before_first_hour(now - HOURS * HOUR, hours[0])
    ok, bad = sum(series["succeeded"]) + tail.succeeded, sum(series["failed"]) + tail.failed
    return {
        "labels": _labels(hours),
        "series": series,
        "started": started,
        "failure_rate": rate,
        "failure_rate_24h": 100.0 * bad / (ok + bad) if ok + bad else None,
        "finished_24h": ok + bad + sum(series["canceled"]) + tail.canceled,
        "started_24h": sum(started) + tail.started,
    }


def pools(now: datetime) -> list[PoolLoad]:
    """Each pool's load now (running, backlog, retrying) against its limits, and its step
    latency over the last 24 hours.

    A branch held back by its own run's ``max_parallel`` is not backlog: it waits for an
    earlier branch of that run, not for the pool (a fan-out of 10,000 under a cap of 10 would
    show a pool with free slots as 9,990 deep). Those are counted apart, as ``held``."""
    rows = {p.name: p for p in Pool.objects.all()}
    names = set(settings.SLUICE_POOLS) | set(rows)
    live = Step.objects.filter(superseded=False)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    busy = live.filter(status__in=["running", "pending", "retrying"], kind__in=["step", "branch"])
    for row in busy.values("pool", "status", "held").annotate(n=Count("id")):
        status = "held" if row["held"] and row["status"] == "pending" else row["status"]
        counts[row["pool"]][status] += row["n"]
        names.add(row["pool"])
    latency = _latency(now)
    names |= set(latency)
    loads = []
    for name in sorted(names):
        conf = rows.get(name)
        defaults = settings.SLUICE_POOLS.get(name, {})
        p50, p95, samples = latency.get(name, (0.0, 0.0, 0))
        loads.append(
            PoolLoad(
                name=name,
                running=counts[name]["running"],
                backlog=counts[name]["pending"],
                retrying=counts[name]["retrying"],
                held=counts[name]["held"],
                limit=conf.max_concurrency if conf else defaults.get("max_concurrency"),
                rate_limit=conf.rate_limit if conf else defaults.get("rate_limit"),
                rate_period=conf.rate_period if conf else float(defaults.get("rate_period") or 1.0),
                p50=p50,
                p95=p95,
                samples=samples,
            )
        )
    return loads


_LATENCY_SQL = """
SELECT pool,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d),
       count(*)
FROM (
    SELECT pool, d, row_number() OVER (PARTITION BY pool ORDER BY finished_at DESC) AS k
    FROM (
        SELECT pool, finished_at,
               GREATEST(0, EXTRACT(EPOCH FROM finished_at - started_at))::float8 AS d
        FROM workflows_step
        WHERE finished_at >= %s AND started_at IS NOT NULL
          AND kind IN ('step', 'branch') AND status IN ('succeeded', 'failed')
        ORDER BY finished_at DESC
        LIMIT %s
    ) AS newest
) AS ranked
WHERE k <= %s
GROUP BY pool
"""


def _latency(now: datetime) -> dict[str, tuple[float, float, int]]:
    """(p50, p95, samples) of step durations per pool, over the newest ``LATENCY_SAMPLE`` of
    each pool among the newest ``4 x LATENCY_SAMPLE`` steps finished in the last 24 hours.

    On PostgreSQL the percentiles are computed by the database (``percentile_cont`` is the
    same linear interpolation as ``percentile``): bringing 20,000 rows into Python cost the
    overview ~0.4 s on a long history (W8 in docs/performance.md)."""
    since = now - timedelta(hours=HOURS)
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(_LATENCY_SQL, [since, LATENCY_SAMPLE * 4, LATENCY_SAMPLE])
            return {pool: (float(p50), float(p95), int(n)) for pool, p50, p95, n in cur}
    durations: dict[str, list[float]] = defaultdict(list)
    recent = (
        Step.objects.filter(
            finished_at__gte=since,
            started_at__isnull=False,
            kind__in=["step", "branch"],
            status__in=["succeeded", "failed"],
        )
        .order_by("-finished_at")
        .values_list("pool", "started_at", "finished_at")
    )[: LATENCY_SAMPLE * 4]
    for pool, began, ended in recent:
        if began and ended and len(durations[pool]) < LATENCY_SAMPLE:
            durations[pool].append(max(0.0, (ended - began).total_seconds()))
    return {
        pool: (percentile(sorted(v), 50), percentile(sorted(v), 95), len(v))
        for pool, v in durations.items()
    }


def cost_by_pipeline(now: datetime, rows: dict[datetime, Hour] | None = None) -> dict[str, Any]:
    """LLM cost per pipeline per day over the last 14 days (from the journal's step costs).
    ``rows``: ``history()`` of those days' hours or more (the overview shares one); only the
    chart's own hours are summed, each once, into the local day it starts on."""
    today = timezone.localdate(now)
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    index = {d: i for i, d in enumerate(days)}
    by_pipeline: dict[str, list[float]] = defaultdict(lambda: [0.0] * DAYS)
    hours = _two_weeks(now)
    rows = history(hours, now) if rows is None else rows
    for hour in hours:
        row = rows.get(hour)
        i = index.get(timezone.localdate(hour))
        if row is not None and i is not None:
            for pipeline, total in row.cost.items():
                by_pipeline[pipeline][i] += float(total)
    totals = {name: sum(values) for name, values in by_pipeline.items()}
    ordered = sorted(by_pipeline, key=lambda n: -totals[n])
    return {
        "labels": [f"{d:%b %d}" for d in days],
        "pipelines": ordered,
        "values": {n: by_pipeline[n] for n in ordered},
        "totals": totals,
        "total": sum(totals.values()),
        "today": sum(v[-1] for v in by_pipeline.values()),
    }


# Characters of a failed run's error type and message the ops overview reads (it shows 140).
FAILURE_TEXT = 200


def attention(now: datetime) -> dict[str, Any]:
    """Things an operator should look at: recent failures, runs waiting longest to start."""
    # Of each error only what the list shows (its type, the message's first 140 characters),
    # cut in the database: a step's message was once 20 MB, read whole for every overview.
    failures = list(
        Run.objects.filter(status="failed", finished_at__gte=now - timedelta(hours=HOURS))
        .order_by("-finished_at")
        .only("id", "workflow", "finished_at", "current_step")
        .annotate(
            shown_type=Substr(KeyTextTransform("type", "error"), 1, FAILURE_TEXT),
            shown_message=Substr(KeyTextTransform("message", "error"), 1, FAILURE_TEXT),
        )[:8]
    )
    for run in failures:
        # The template reads run.error.type / .message; error itself stays unloaded.
        run.error = {"type": run.shown_type or "", "message": run.shown_message or ""}
    rung = now - 4 * timedelta(seconds=settings.SLUICE_DOORBELL_GRACE_SECONDS)
    active = Run.objects.filter(status__in=ACTIVE_RUN).aggregate(
        oldest_pending=Min("created_at", filter=Q(status="pending")),
        stuck=Count("pk", filter=Q(wake_requested_at__lt=rung)),
    )
    oldest_pending = active["oldest_pending"]
    return {
        "failures": failures,
        "stuck": active["stuck"] or 0,
        "oldest_pending_age": (now - oldest_pending).total_seconds() if oldest_pending else None,
    }


def overview(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    rows = history(_two_weeks(now), now)
    status, estimated = status_counts()
    return {
        "now": now,
        "status": status,
        # Every run not finished yet, compensating ones included (what ?status=active lists).
        "in_flight": sum(status[s] for s in ACTIVE_RUN),
        # The statuses whose counts are the planner's estimates (shown with "≈").
        "status_estimated": [s for s in RunStatus.values if s not in ACTIVE_RUN]
        if estimated
        else [],
        "hourly": hourly(now, rows),
        "pools": pools(now),
        "latency_sample": LATENCY_SAMPLE,
        "gates": gateinfo.open_gate_counts(now),
        "cost": cost_by_pipeline(now, rows),
        "attention": attention(now),
    }
