"""The production recipe, run: the Procfile's processes on this machine's PostgreSQL and Redis.

``manage.py sluice_procfile`` (what ``make prod-local`` runs) starts release, gunicorn, a
Celery worker per pool queue and beat from the Procfile, on a free loopback port, against the
test database, with DEBUG off, JSON logs and metrics in multiprocess mode. The test checks the
probes and static files, pushes runs through a gate over the API, scrapes the metrics, reads the
JSON log lines, then stops everything with SIGTERM while a step runs and starts it again: the
run is not lost, and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from tests.deploy.prom import sample
from tests.live import ROOT, database_url, flush_broker, wait_until
from workflows import health
from workflows.keys import create_api_key
from workflows.models import Run, Step

pytestmark = [pytest.mark.integration]

METRICS_TOKEN = "scrape-me-please"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """``manage.py sluice_procfile`` as a child process, its output in a file."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "stack.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "SLUICE_WORKFLOW_MODULES": "tests.deploy.flows",
            "SLUICE_VAR_DIR": str(tmp / "var"),
            "STATIC_ROOT": str(tmp / "static"),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
            "PYTHONPATH": str(ROOT),
            "PORT": str(port),
            "DEBUG": "0",
            "SLUICE_HTTPS": "0",
            "SECRET_KEY": "prod-local-test-" + "k" * 40,
            "SLUICE_LOG_FORMAT": "json",
            "SLUICE_METRICS_TOKEN": METRICS_TOKEN,
            "SLUICE_SWEEP_INTERVAL": "1",
            "SLUICE_LEASE_SECONDS": "4",
            "SLUICE_DOORBELL_GRACE_SECONDS": "3",
            "WEB_CONCURRENCY": "1",
            "SLUICE_WORKER_DEFAULT_CONCURRENCY": "1",
            "SLUICE_WORKER_LLM_CONCURRENCY": "1",
            "CELERY_LOG_LEVEL": "info",
        }
        self.env.pop("SLUICE_TEST_DB_NAME", None)

    def start(self, *extra: str) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "sluice_procfile", "--grace", "30", *extra],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def terminate(self, timeout: float = 45) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            self.proc.wait(timeout=10)
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def stack(transactional_db: None, tmp_path: Path) -> Iterator[Stack]:
    flush_broker()
    health.clear_cache()
    s = Stack(tmp_path, free_port())
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.terminate()
        print(s.output()[-8000:])


def json_lines(output: str, process: str) -> list[dict[str, Any]]:
    """The JSON objects one process printed (``name | {...}`` lines of the supervisor)."""
    found = []
    for line in output.splitlines():
        name, sep, rest = line.partition(" | ")
        if sep and name.strip() == process and rest.startswith("{"):
            try:
                found.append(json.loads(rest))
            except ValueError:
                pass
    return found


def push_to_gate(client: httpx.Client, write: str, slow: float = 0.0) -> str:
    resp = client.post(
        "/api/runs",
        json={"pipeline": "deploy.gated", "input": {"text": " Hello ", "parts": 2, "slow": slow}},
        headers={"Authorization": f"Bearer {write}"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def open_gate(client: httpx.Client, decide: str, run_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        resp = client.get("/api/gates", headers={"Authorization": f"Bearer {decide}"})
        assert resp.status_code == 200, resp.text
        for gate in resp.json():
            if str(gate["run_id"]) == run_id:
                return dict(gate)
        return None

    return wait_until(find, timeout=30, interval=0.3, message=f"the gate of run {run_id}")


def decide_and_finish(client: httpx.Client, keys: dict[str, str], run_id: str) -> None:
    gate = open_gate(client, keys["decide"], run_id)
    resp = client.post(
        gate["decision_url"],
        json={"outcome": "approve", "comment": "fine"},
        headers={"Authorization": f"Bearer {keys['decide']}"},
    )
    assert resp.status_code == 200, resp.text

    def finished() -> dict[str, Any] | None:
        resp = client.get(
            f"/api/runs/{run_id}", headers={"Authorization": f"Bearer {keys['read']}"}
        )
        body = resp.json()
        return body if body["status"] in ("succeeded", "failed", "canceled") else None

    body = wait_until(finished, timeout=30, interval=0.3, message=f"run {run_id} to finish")
    assert body["status"] == "succeeded", body
    assert body["output"]["outcome"] == "approve"


def test_the_procfile_topology_serves_runs_and_stops_without_losing_one(stack: Stack) -> None:
    started = time.monotonic()
    keys = {
        scope: create_api_key(f"deploy-{scope}", scopes=[f"{s}" for s in scopes])[1]
        for scope, scopes in {
            "write": ["runs:write"],
            "read": ["runs:read"],
            "decide": ["gates:decide"],
        }.items()
    }

    # No worker yet: the check command says so in words, and fails.
    with pytest.raises(CommandError) as refused:
        call_command("sluice_check", "--only", "queues")
    assert refused.value.returncode == 1

    stack.start()
    client = httpx.Client(base_url=stack.url(""), timeout=10)

    def answers() -> bool:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=90, interval=0.3, message="gunicorn to answer /healthz")
    assert client.get("/healthz").json() == {"status": "ok"}

    def ready() -> dict[str, Any] | None:
        resp = client.get("/readyz")
        return resp.json() if resp.status_code == 200 else None

    body = wait_until(ready, timeout=60, interval=0.5, message="/readyz to say ready")
    assert body["status"] == "ready" and body["failing"] == []
    assert body["checks"]["queues"]["queues"]["llm"]["workers"] == 1
    assert body["checks"]["migrations"]["pending"] == 0
    # Nothing sensitive: no DSN, no broker URL, no secret.
    raw = client.get("/readyz").text
    for secret in (database_url(), settings.CELERY_BROKER_URL, stack.env["SECRET_KEY"]):
        assert secret not in raw

    # With the workers up, the check command passes.
    health.clear_cache()
    call_command("sluice_check", "--only", "queues")

    # DEBUG is off, and whitenoise serves the collected static files.
    assert client.get("/does-not-exist/").status_code == 404
    assert "Traceback" not in client.get("/does-not-exist/").text
    static = client.get("/static/sluice/sluice.js")
    assert static.status_code == 200 and static.headers["content-type"].startswith(
        "text/javascript"
    )

    # A run through the gate, over the API.
    first = push_to_gate(client, keys["write"])
    decide_and_finish(client, keys, first)

    # Database connections: at most WEB_CONCURRENCY + 2 x (worker concurrencies), as
    # docs/deploy.md says (1 + 2 x (1 + 1) here), not counting this test's own.
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        held = cur.fetchone()[0]
    print(f"prod-local stack holds {held} database connections")
    assert held <= 1 + 2 * (1 + 1), held

    # Metrics: counters from the two worker processes (the default queue's worker ran the inline
    # step, the llm queue's worker the branches), added up by the web process.
    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scrape.status_code == 200, scrape.text
    text = scrape.text
    count = "sluice_step_duration_seconds_count"
    assert sample(text, count, pool="default", outcome="succeeded") >= 1
    assert sample(text, count, pool="llm", outcome="succeeded") == 2
    assert sample(text, "sluice_llm_tokens_total", model="fake:m1", direction="input") == 20
    assert sample(text, "sluice_llm_cost_usd_total", model="fake:m1") == pytest.approx(0.003)
    assert sample(text, "sluice_runs_finished_total", status="succeeded") == 1
    assert sample(text, "sluice_sweep_passes_total") >= 1
    pids = {p.stem.rsplit("_", 1)[-1] for p in (stack.tmp / "prometheus").glob("histogram_*.db")}
    assert len(pids) >= 2, f"step histograms from one process only: {pids}"
    assert client.get("/metrics").status_code == 401

    # JSON logs: the step's log line carries its run, generation and step.
    lines = json_lines(stack.output(), "worker-llm")
    mine = [e for e in lines if e.get("message", "").startswith("analysing hello-")]
    assert len(mine) == 2, lines[-5:]
    assert {(e["run_id"], e["generation"], e["step"]) for e in mine} == {(first, 1, "analyse")}

    # SIGTERM while a step runs: every process stops cleanly, and the run is not lost.
    second = push_to_gate(client, keys["write"], slow=4.0)
    wait_until(
        lambda: Step.objects.filter(run_id=second, name="linger", status="running").exists(),
        timeout=30,
        message="the slow step to start",
    )
    client.close()
    assert stack.terminate() == 0, stack.output()[-3000:]
    out = stack.output()
    for name in ("web", "worker-default", "worker-llm", "beat"):
        assert f"{name} stopped (exit code 0)" in out, out[-3000:]
    assert Run.objects.get(pk=second).status != "failed"

    stack.start("--skip", "release")
    client = httpx.Client(base_url=stack.url(""), timeout=10)
    wait_until(answers, timeout=90, interval=0.3, message="gunicorn to answer again")
    decide_and_finish(client, keys, second)
    linger = Step.objects.get(run_id=second, name="linger")
    assert linger.status == "succeeded"
    client.close()
    assert stack.terminate() == 0
    print(f"prod-local test: {time.monotonic() - started:.1f} s")
