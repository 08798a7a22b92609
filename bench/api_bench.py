"""W7: ``POST /api/runs`` under gunicorn (4 sync workers) with 32 concurrent clients.

Run from ``bench/run.py --only W7``. Gunicorn serves ``config.wsgi`` on 127.0.0.1 with the
bench database and broker of ``bench/run.py``; no Celery worker runs, so each start is the API's
whole job: authenticate the key (a SHA-256 lookup), count it against its rate limit, insert the
run and ring its doorbell (one Redis publish after the commit). The clients are 32 threads in
the driver process, each with its own connection (gunicorn's sync workers close it after each
response, so every request also pays a TCP connect on loopback). Reported: starts per second
over ``seconds`` after a warm-up, and p50/p99 of the client-side latency.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gunicorn(port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                GUNICORN,
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--worker-class",
                "sync",
                "--backlog",
                "2048",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, "DEBUG": "0", "SLUICE_HTTPS": "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {log}") from None
            time.sleep(0.2)
    raise TimeoutError("gunicorn did not listen")


def _client(
    port: int, headers: dict[str, str], body: bytes, stop: float, out: list[tuple[float, int]]
) -> None:
    while time.monotonic() < stop:
        t = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/api/runs", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except OSError:
            status = 0
        finally:
            conn.close()
        out.append((time.perf_counter() - t, status))


def load(port: int, raw_key: str, clients: int, seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}
    body = json.dumps({"pipeline": "bench.chain", "input": {"steps": 1}}).encode()
    results: list[list[tuple[float, int]]] = [[] for _ in range(clients)]
    t0 = time.monotonic()
    stop = t0 + seconds
    threads = [
        threading.Thread(target=_client, args=(port, headers, body, stop, results[i]))
        for i in range(clients)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    flat = [r for rs in results for r in rs]
    ok = sorted(t for t, s in flat if s == 201)
    bad = len(flat) - len(ok)
    if not ok:
        statuses = sorted({s for _, s in flat})
        raise RuntimeError(f"W7: no request succeeded ({bad} failed, statuses {statuses})")
    return {
        "starts_per_s": round(len(ok) / wall, 1),
        "p50_ms": round(ok[len(ok) // 2] * 1000, 1),
        "p99_ms": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))] * 1000, 1),
        "requests": len(flat),
        "errors": bad,
        "seconds": round(wall, 1),
    }


def run_w7(logs: Path, workers: int = 4, clients: int = 32, seconds: float = 15) -> dict[str, Any]:
    """Django must be set up on the bench database (its key is minted there)."""
    from workflows.keys import create_api_key

    _, raw = create_api_key("bench-w7", scopes=["runs:write"], rate_limit=10**9)
    port = _free_port()
    proc = start_gunicorn(port, workers, logs / "gunicorn.log")
    try:
        load(port, raw, clients, 3)  # warm-up: every worker imports, connects, prepares
        result = load(port, raw, clients, seconds)
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"gunicorn_workers": workers, "clients": clients, **result}
