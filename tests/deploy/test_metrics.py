"""/metrics: who may scrape it, what the engine's events count, what the database gauges say,
and the example Grafana dashboard asking only for series that exist.

Runs advance in this process here (the in-memory doorbell); tests/deploy/test_prod_local.py
scrapes counters written by separate worker processes (multiprocess mode)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from config import metrics
from reviews.models import Gate
from tests.deploy.prom import names, sample
from tests.support import Bell
from workflows import start
from workflows.models import Outbox

pytestmark = [pytest.mark.django_db(transaction=True)]

TOKEN = "a-long-random-scrape-token"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "sluice.json"


def scrape(client: Client, token: str = TOKEN) -> str:
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.content
    assert resp["Content-Type"].startswith("text/plain")
    return resp.content.decode()


def test_metrics_are_off_until_a_token_or_networks_are_set(client: Client, settings: Any) -> None:
    settings.SLUICE_METRICS_TOKEN = ""
    settings.SLUICE_METRICS_ALLOW = []
    assert client.get("/metrics").status_code == 404


def test_a_token_is_required_and_checked(client: Client, settings: Any) -> None:
    settings.SLUICE_METRICS_TOKEN = TOKEN
    settings.SLUICE_METRICS_ALLOW = []
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert "sluice_runs" in names(scrape(client))
    assert client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_an_allowlist_admits_its_networks_only(client: Client, settings: Any) -> None:
    settings.SLUICE_METRICS_TOKEN = ""
    settings.SLUICE_METRICS_ALLOW = ["10.0.0.0/8"]
    assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    settings.SLUICE_METRICS_ALLOW = ["10.0.0.0/8", "127.0.0.1/32"]
    assert client.get("/metrics").status_code == 200
    # With both set, both are needed.
    settings.SLUICE_METRICS_TOKEN = TOKEN
    assert client.get("/metrics").status_code == 401
    assert "sluice_runs" in names(scrape(client))


def test_an_ipv4_client_of_a_dual_stack_socket_is_matched_as_ipv4(
    client: Client, settings: Any
) -> None:
    """Behind a dual-stack listener an IPv4 client arrives as ``::ffff:10.1.1.1``: it was
    refused against ``10.0.0.0/8``."""
    settings.SLUICE_METRICS_TOKEN = ""
    settings.SLUICE_METRICS_ALLOW = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.1.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:192.168.1.1").status_code == 403
    settings.SLUICE_METRICS_ALLOW = ["::ffff:10.0.0.0/104"]  # the mapped form admits it too
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.1.1").status_code == 200


def test_a_refusal_says_its_cause(client: Client, settings: Any) -> None:
    """A valid token from an address outside the networks was told "Metrics need a valid
    token."; and an entry that is junk (set from code: settings refuses it at start) admits
    nobody instead of making every scrape a 500."""
    settings.SLUICE_METRICS_TOKEN = TOKEN
    settings.SLUICE_METRICS_ALLOW = ["10.0.0.0/8"]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    outside = client.get("/metrics", headers=bearer)
    assert outside.status_code == 403
    assert b"token" not in outside.content and b"address" in outside.content
    no_token = client.get("/metrics", REMOTE_ADDR="10.1.1.1")
    assert no_token.status_code == 401 and b"token" in no_token.content
    assert client.get("/metrics", headers=bearer, REMOTE_ADDR="10.1.1.1").status_code == 200
    settings.SLUICE_METRICS_ALLOW = ["10.0.0.0/8 ", "junk"]
    assert client.get("/metrics", headers=bearer, REMOTE_ADDR="10.1.1.1").status_code == 200
    assert client.get("/metrics", headers=bearer, REMOTE_ADDR="192.0.2.1").status_code == 403


def test_steps_and_runs_are_counted_and_gauges_read_the_tables(
    client: Client, settings: Any, bell: Bell
) -> None:
    import tests.reviews.workflows  # noqa: F401  (registers test.review)

    settings.SLUICE_METRICS_TOKEN = TOKEN
    before = scrape(client)
    run = start("test.chain", {"n": 3})
    bell.drain()
    after = scrape(client)
    count = "sluice_step_duration_seconds_count"
    labels = {"pool": "default", "outcome": "succeeded"}
    assert sample(after, count, **labels) - sample(before, count, **labels) == 3
    finished = sample(after, "sluice_runs_finished_total", status="succeeded")
    assert finished - sample(before, "sluice_runs_finished_total", status="succeeded") == 1
    assert sample(after, "sluice_step_duration_seconds_bucket", pool="default", le="+Inf") >= 3

    # A run waiting at a gate: the gauges come from the tables.
    gated = start("test.review", {"payload": {"x": 1}})
    bell.drain()
    gate = Gate.objects.get(run_id=gated.id)
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() + timedelta(hours=2))
    Outbox.objects.create(run_id=run.id, kind="webhook", key="metrics-test", payload={})
    text = scrape(client)
    assert sample(text, "sluice_runs", status="suspended") == 1
    assert sample(text, "sluice_runs", status="running") == 0
    assert sample(text, "sluice_gates_open") == 1
    assert sample(text, "sluice_gates_due_within_hour") == 0
    assert sample(text, "sluice_outbox_backlog") == 1
    # Within the hour on either clock (the gauge reads the engine's, the database's).
    Gate.objects.filter(pk=gate.pk).update(deadline=timezone.now() + timedelta(minutes=5))
    assert sample(scrape(client), "sluice_gates_due_within_hour") == 1


def test_llm_usage_and_sweeps_are_counted(client: Client, settings: Any) -> None:
    settings.SLUICE_METRICS_TOKEN = TOKEN
    before = scrape(client)
    metrics.observe(
        "step_finished",
        pool="llm",
        seconds=0.2,
        outcome="succeeded",
        usage={"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 7, "output_tokens": 3},
        cost=0.25,
    )
    metrics.observe(
        "sweep_finished", result={"rung": 4, "steps_reclaimed": 2, "runs_reclaimed": 1, "timers": 0}
    )
    after = scrape(client)
    model = "openai:gpt-4o-mini"

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("sluice_llm_tokens_total", model=model, direction="input") == 7
    assert delta("sluice_llm_tokens_total", model=model, direction="output") == 3
    assert delta("sluice_llm_cost_usd_total", model=model) == pytest.approx(0.25)
    assert delta("sluice_sweep_rung_total") == 4
    assert delta("sluice_lease_reclaims_total", kind="step") == 2
    assert delta("sluice_lease_reclaims_total", kind="run") == 1
    assert delta("sluice_sweep_passes_total") == 1


def test_gauge_counts_are_capped(client: Client, settings: Any, bell: Bell) -> None:
    settings.SLUICE_METRICS_TOKEN = TOKEN
    settings.SLUICE_METRICS_COUNT_CAP = 2
    for i in range(3):
        Outbox.objects.create(kind="webhook", key=f"cap-{i}", payload={})
    assert sample(scrape(client), "sluice_outbox_backlog") == 2


def test_the_pool_backlog_leaves_out_branches_held_by_their_own_run(
    client: Client, settings: Any
) -> None:
    """A run's fan-out past its ``max_parallel`` waits for that run, not for the pool."""
    from workflows.models import Run, Step

    settings.SLUICE_METRICS_TOKEN = TOKEN
    run = Run.objects.create(workflow="wf", status="running", input={})
    for i, held in enumerate([False, True, True, True]):
        Step.objects.create(
            run=run, position=1, branch=i, kind="branch", name="b", pool="default",
            status="pending", held=held,
        )  # fmt: skip
    assert sample(scrape(client), "sluice_pool_backlog", pool="default") == 1


def exported(text: str) -> set[str]:
    return names(text)


def test_with_the_database_down_the_counters_are_still_served(
    client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table gauges go, ``sluice_database_up`` says 0, the scrape is a 200: it was a 500,
    and the counters disappeared exactly during an outage."""
    from django.db import OperationalError, connections

    settings.SLUICE_METRICS_TOKEN = TOKEN
    metrics.observe("sweep_finished", result={})
    assert sample(scrape(client), "sluice_database_up") == 1

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("the database does not answer")

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    text = scrape(client)
    assert "\nsluice_database_up 0.0\n" in text
    assert "sluice_runs{" not in text and "sluice_gates_open " not in text
    assert sample(text, "sluice_sweep_passes_total") >= 1


def test_the_grafana_dashboard_uses_exactly_the_exported_series(
    client: Client, settings: Any, bell: Bell
) -> None:
    settings.SLUICE_METRICS_TOKEN = TOKEN
    # Every labelled series appears once something happened: a run, an LLM step, a sweep.
    start("test.chain", {"n": 1})
    bell.drain()
    metrics.observe(
        "step_finished",
        pool="llm",
        seconds=0.1,
        outcome="succeeded",
        usage={"provider": "p", "model": "m", "input_tokens": 1},
        cost=0.01,
    )
    metrics.observe("sweep_finished", result={})
    series = {n for n in exported(scrape(client)) if n.startswith("sluice_")}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bsluice_[a-z_]+\b", e)}
    assert used <= series, f"the dashboard asks for series Sluice does not export: {used - series}"
    families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in series}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - {n for n in families if n.endswith("_created")} <= shown | {
        n.removesuffix("_total") for n in shown
    }, f"exported but on no panel: {families - shown}"
    assert set(metrics.DB_SERIES) <= used
