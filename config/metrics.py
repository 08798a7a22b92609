"""Prometheus metrics: ``GET /metrics``, correct across every gunicorn and Celery process.

Two honest sources:

- **What processes did** (steps executed and their latency, runs that ended, doorbells the
  sweep rang again, leases it reclaimed, LLM tokens and cost) are counters and histograms fed by
  the engine's instrumentation events (``workflows.core.instrument``). With
  ``PROMETHEUS_MULTIPROC_DIR`` set (the production recipe sets it for every process),
  prometheus-client keeps them in files under that directory, one per process, and a scrape of
  any web process adds up every process's files, dead ones included. Without it a scrape sees
  only the web process that answers it (fine for ``make run``; docs/deploy.md).
- **What is true now** (runs by status, pool in flight and backlog, open gates and those due
  within the hour, the outbox backlog) are gauges read from the database at scrape time, each a
  count over a partial index capped at ``SLUICE_METRICS_COUNT_CAP`` rows, so a scrape costs the
  same with ten million finished runs as with ten.

The endpoint is off (404) unless ``SLUICE_METRICS_TOKEN`` (a bearer token) or
``SLUICE_METRICS_ALLOW`` (client networks) is set; with both, a scrape needs both.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

# Multiprocess mode writes each process's samples under this directory; a process that starts
# before whoever prepares it (a deploy script, sluice_procfile) must not fail on import.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

log = logging.getLogger(__name__)

# --- what processes did ------------------------------------------------------------------------

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

STEP_SECONDS = Histogram(
    "sluice_step_duration_seconds",
    "Wall time of one step attempt, by pool and outcome (succeeded, retrying, failed).",
    ["pool", "outcome"],
    buckets=STEP_BUCKETS,
)
RUNS_FINISHED = Counter(
    "sluice_runs_finished", "Runs that reached a terminal state, by status.", ["status"]
)
SWEEP_PASSES = Counter("sluice_sweep_passes", "Sweep passes completed.")
SWEEP_RUNG = Counter(
    "sluice_sweep_rung",
    "Doorbells the sweep rang again for runs and steps whose message went unanswered.",
)
LEASE_RECLAIMS = Counter(
    "sluice_lease_reclaims",
    "Expired leases the sweep reclaimed (a worker died), by kind (step, run).",
    ["kind"],
)
TIMERS_FIRED = Counter(
    "sluice_sweep_timers_fired", "Timers and wait timeouts the sweep fired (sleeps, events)."
)
LLM_TOKENS = Counter(
    "sluice_llm_tokens",
    "LLM tokens recorded by steps, by model and direction (input, output).",
    ["model", "direction"],
)
LLM_COST = Counter(
    "sluice_llm_cost_usd", "LLM cost recorded by steps, in USD, by model.", ["model"]
)

PROCESS_SERIES = (
    "sluice_step_duration_seconds",
    "sluice_runs_finished_total",
    "sluice_sweep_passes_total",
    "sluice_sweep_rung_total",
    "sluice_lease_reclaims_total",
    "sluice_sweep_timers_fired_total",
    "sluice_llm_tokens_total",
    "sluice_llm_cost_usd_total",
)


# The histogram's child per (pool, outcome): ``labels()`` takes a lock and validates the
# labels on every call, and a step is observed each time one runs.
_step_children: dict[tuple[str, str], Any] = {}


def observe(name: str, **fields: Any) -> None:
    """The instrumentation observer (``workflows.core.instrument.observe``)."""
    if name == "step_finished":
        key = (fields.get("pool") or "default", fields.get("outcome") or "")
        child = _step_children.get(key)
        if child is None:
            child = _step_children[key] = STEP_SECONDS.labels(*key)
        child.observe(float(fields.get("seconds") or 0.0))
        usage, cost = fields.get("usage"), fields.get("cost")
        if usage or cost:
            _llm(usage or {}, cost or 0)
    elif name == "run_finished":
        RUNS_FINISHED.labels(fields.get("status") or "").inc()
    elif name == "sweep_finished":
        result = fields.get("result") or {}
        SWEEP_PASSES.inc()
        SWEEP_RUNG.inc(int(result.get("rung") or 0))
        LEASE_RECLAIMS.labels("step").inc(int(result.get("steps_reclaimed") or 0))
        LEASE_RECLAIMS.labels("run").inc(int(result.get("runs_reclaimed") or 0))
        TIMERS_FIRED.inc(int(result.get("timers") or 0))


def _llm(usage: dict[str, Any], cost: Decimal | float) -> None:
    tokens = {d: usage.get(f"{d}_tokens") for d in ("input", "output")}
    if not any(isinstance(v, int | float) and v for v in tokens.values()) and not cost:
        return
    provider, model = usage.get("provider") or "", usage.get("model") or ""
    label = f"{provider}:{model}" if provider and model else (model or provider or "unknown")
    for direction, value in tokens.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            LLM_TOKENS.labels(label, direction).inc(value)
    if cost:
        LLM_COST.labels(label).inc(float(cost))


def install() -> None:
    """Feed the counters from the engine's events in this process (idempotent)."""
    from workflows.core import instrument

    instrument.observe(observe)


# --- what is true now: gauges read at scrape time ---------------------------------------------

DB_SERIES = (
    "sluice_database_up",
    "sluice_runs",
    "sluice_pool_in_flight",
    "sluice_pool_backlog",
    "sluice_gates_open",
    "sluice_gates_due_within_hour",
    "sluice_outbox_backlog",
)


def count_cap() -> int:
    """At least 1 (settings refuses less; a cap of 0 would make every gauge 0)."""
    return max(1, int(getattr(settings, "SLUICE_METRICS_COUNT_CAP", 100_000)))


def _capped(qs: Any) -> int:
    """``COUNT(*)`` over at most count_cap() rows (Django wraps the sliced query:
    ``SELECT COUNT(*) FROM (SELECT … LIMIT cap)``)."""
    return int(qs.order_by().values("pk")[: count_cap()].count())


class DatabaseCollector(Collector):
    """Gauges computed from the tables when scraped (bounded counts over partial indexes).

    With the database down they are left out, ``sluice_database_up`` says 0, and the scrape
    still serves the processes' counters: an outage is when they are wanted."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            families = list(self._families())
        except DatabaseError:
            log.warning("metrics: the database does not answer; its gauges are left out")
            families = []
        yield GaugeMetricFamily(
            "sluice_database_up",
            "1 when this scrape could read the tables, 0 when the database did not answer.",
            value=1 if families else 0,
        )
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        from reviews.models import Gate, GateStatus
        from workflows.core import clock
        from workflows.models import ACTIVE_RUN, Outbox, OutboxStatus, Pool, Run, Step

        now = clock.now()  # leases and deadlines are written on the engine's clock
        runs = GaugeMetricFamily(
            "sluice_runs",
            "Runs not finished yet, by status (finished runs: sluice_runs_finished_total).",
            labels=["status"],
        )
        for status in ACTIVE_RUN:
            runs.add_metric([str(status)], _capped(Run.objects.filter(status=status)))
        yield runs

        pools = set(settings.SLUICE_POOLS) | set(Pool.objects.values_list("name", flat=True))
        in_flight = GaugeMetricFamily(
            "sluice_pool_in_flight",
            "Steps running under a live lease in each pool (what its concurrency limit counts).",
            labels=["pool"],
        )
        backlog = GaugeMetricFamily(
            "sluice_pool_backlog",
            "Steps waiting in each pool for a worker or a free slot.",
            labels=["pool"],
        )
        for pool in sorted(pools):
            running = Step.objects.filter(pool=pool, status="running", lease_expires_at__gt=now)
            # Branches held back by their own run's max_parallel wait for that run, not for
            # the pool: a run's fan-out of 10,000 under a cap of 10 is no pool backlog.
            pending = Step.objects.filter(pool=pool, status="pending", superseded=False, held=False)
            in_flight.add_metric([pool], _capped(running))
            backlog.add_metric([pool], _capped(pending))
        yield in_flight
        yield backlog

        open_gates = Gate.objects.filter(status=GateStatus.OPEN)
        yield GaugeMetricFamily(
            "sluice_gates_open", "Review gates waiting for a decision.", value=_capped(open_gates)
        )
        yield GaugeMetricFamily(
            "sluice_gates_due_within_hour",
            "Open review gates whose deadline falls within the next hour (or has passed).",
            value=_capped(open_gates.filter(deadline__lte=now + timedelta(hours=1))),
        )
        yield GaugeMetricFamily(
            "sluice_outbox_backlog",
            "Side effects (webhooks, e-mails) waiting in the outbox to be delivered.",
            value=_capped(Outbox.objects.filter(status=OutboxStatus.PENDING)),
        )


def registry() -> CollectorRegistry:
    """What a scrape reads: every process's files in multiprocess mode, else this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
    else:
        reg = CollectorRegistry()
        for collector in (
            STEP_SECONDS,
            RUNS_FINISHED,
            SWEEP_PASSES,
            SWEEP_RUNG,
            LEASE_RECLAIMS,
            TIMERS_FIRED,
            LLM_TOKENS,
            LLM_COST,
        ):
            reg.register(collector)
    reg.register(DatabaseCollector())
    return reg


# --- the endpoint ----------------------------------------------------------------------------


def _client_ip(request: HttpRequest) -> str:
    from config.security import client_ip

    return client_ip(request)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """``SLUICE_METRICS_ALLOW`` parsed once (settings has already stripped and checked it at
    start; an entry that is still junk, set from code, admits nobody instead of failing every
    scrape with a 500)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            log.error("metrics: SLUICE_METRICS_ALLOW entry %r is not a network; ignored", entry)
    return tuple(networks)


def _addresses(raw: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The client address (none when it is not one), and for an IPv4 client of a dual-stack
    socket (``::ffff:10.1.1.1``) the IPv4 address it is too, so ``10.0.0.0/8`` admits it."""
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        return []
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return [addr, addr.ipv4_mapped]
    return [addr]


# Why a scrape is refused, in the words of the answer (and its status).
REFUSALS = {
    404: "Not found.\n",
    401: "Metrics need a valid token.\n",
    403: "Metrics are not served to this client address.\n",
}


def allowed(request: HttpRequest) -> int:
    """0 when the request may scrape; else the status to answer (404: metrics are off, 401:
    the token is missing or wrong, 403: the client is outside the allowed networks)."""
    token = str(getattr(settings, "SLUICE_METRICS_TOKEN", "") or "")
    networks = _networks(tuple(getattr(settings, "SLUICE_METRICS_ALLOW", ()) or ()))
    configured = bool(getattr(settings, "SLUICE_METRICS_ALLOW", ()))
    if not token and not configured:
        return 404
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return 401
    if configured:
        addresses = _addresses(_client_ip(request))
        if not any(addr in network for addr in addresses for network in networks):
            return 403
    return 0


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = allowed(request)
    if refused:
        response = HttpResponse(REFUSALS[refused], status=refused, content_type="text/plain")
        if refused == 401:
            response["WWW-Authenticate"] = 'Bearer realm="sluice-metrics"'
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


__all__ = [
    "DB_SERIES",
    "PROCESS_SERIES",
    "install",
    "metrics_view",
    "observe",
    "registry",
    "REGISTRY",
]
