"""W8: a long history (1,000,000 finished runs, 10,000,000 journal rows) and what it costs.

Run from ``bench/run.py --only W8`` (``--w8-scale 0.01`` for a smoke run at 1 % size: the
figures of such a run are labelled with their scale in results.json). Works in a PostgreSQL
database of its own, ``bench_history``, created fresh and dropped afterwards.

- **load**: the runs and their journal rows are written with ``COPY … FROM STDIN`` (psycopg's
  ``cursor.copy``), into the migrated tables with every index in place, then ``ANALYZE``. The
  load time is reported (``load_s``).
- **pages**: the runs list (``GET /runs/``, HTML, a logged-in operator), the API list
  (``GET /api/runs``, an API key) and the ops overview (``GET /ops/``), each ``requests`` times
  in-process through Django's full request stack (as W5): p95 and median ms, and the number of
  queries per request.
- **prune**: the engine's retention prune (``workflows.core.sweeper.prune``) in a process of
  its own, over the oldest ``prune_runs`` runs (10 % of the history), while W1 (200 runs x 10
  steps, two worker processes) runs beside it again and again in the same database. Reported:
  runs pruned per second, W1's steps/s alone (before) and during the prune, and the loss. A
  prune still going after 5 minutes is stopped and its rate taken from the runs gone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "bench_history"
HISTORY_DAYS = 60
STEPS_PER_RUN = 10
PIPELINES = ["finance.quarterly_figures", "contracts.clause_check", "support.ticket_triage"]
RUN_COLUMNS = (
    "id, workflow, version, status, generation, input, output, context, on_complete, "
    "max_parallel, lease_owner, current_step, cost, created_at, updated_at, started_at, "
    "finished_at, callback_url, created_by, tenant, after_compensation"
)
STEP_COLUMNS = (
    "id, run_id, generation, superseded, position, branch, kind, name, status, pool, held, "
    "attempt, max_attempts, target, args, result, remaining, lease_owner, cost, created_at, "
    "started_at, finished_at, digest, undo"
)


def _status(i: int) -> str:
    """90 % succeeded, 8 % failed, 2 % canceled: a plausible finished history."""
    r = i % 50
    return "canceled" if r == 0 else "failed" if r <= 4 else "succeeded"


def _run_lines(start: int, count: int, t_end: datetime, runs: int) -> tuple[str, list[tuple]]:
    """COPY text for runs ``start..start+count`` (oldest first), and (id, created) per run."""
    out = []
    ids = []
    span = HISTORY_DAYS * 86400
    for i in range(start, start + count):
        rid = str(uuid.UUID(int=(i + 1) | (0x4 << 76) | (0x8 << 60)))
        created = t_end - timedelta(seconds=span * (runs - i) / runs)
        c, f = created.isoformat(), (created + timedelta(seconds=2)).isoformat()
        status = _status(i)
        output = '{"ok": true}' if status == "succeeded" else "\\N"
        out.append(
            f'{rid}\t{PIPELINES[i % 3]}\t1\t{status}\t1\t{{"doc": {i}}}\t{output}\t{{}}\t\t'
            f"10\t\tstep 10\t0\t{c}\t{f}\t{c}\t{f}\t\tapi:sk_bench\t\t\n"
        )
        ids.append((rid, c))
    return "".join(out), ids


# Everything of a journal row but its id, run and time, per position (the loader is CPU-bound
# on this formatting: 10,000,000 rows).
_STEP_MIDDLE = [
    f"\t1\tf\t{p}\t-1\tstep\tstep {p}\tsucceeded\tdefault\tf\t1\t1\t\t"
    f'{{"args": [{p}]}}\t{{"v": {p}}}\t0\t\t0\t'
    for p in range(1, 1000)
]


def _step_lines(first_id: int, ids: list[tuple], steps: int) -> str:
    out = []
    sid = first_id
    middle = _STEP_MIDDLE[:steps]
    for rid, at in ids:
        times = f"{at}\t{at}\t{at}\t\t\n"
        for m in middle:
            out.append(f"{sid}\t{rid}{m}{times}")
            sid += 1
    return "".join(out)


def _secondary_indexes(conn: Any, table: str) -> list[tuple[str, str]]:
    """(name, definition) of ``table``'s indexes that back no constraint."""
    return conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
        " WHERE t.relname = %s AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
        [table],
    ).fetchall()


def load_history(dsn: str, runs: int, steps: int = STEPS_PER_RUN, batch: int = 20_000) -> float:
    """COPY ``runs`` finished runs of ``steps`` journal rows each; returns the seconds taken.

    As a bulk load is done: secondary indexes are dropped first and built again after, and
    the foreign-key triggers are skipped (``session_replication_role = replica``; the rows are
    consistent by construction). Primary keys stay in place throughout."""
    import psycopg

    t_end = datetime.now(UTC) - timedelta(hours=1)
    t0 = time.monotonic()
    next_step = 1
    with psycopg.connect(dsn) as conn:
        saved = _secondary_indexes(conn, "workflows_run") + _secondary_indexes(
            conn, "workflows_step"
        )
        for name, _ in saved:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("SET session_replication_role = replica")
        for start in range(0, runs, batch):
            count = min(batch, runs - start)
            text, ids = _run_lines(start, count, t_end, runs)
            with conn.cursor() as cur:
                with cur.copy(f"COPY workflows_run ({RUN_COLUMNS}) FROM STDIN") as copy:
                    copy.write(text)
                with cur.copy(f"COPY workflows_step ({STEP_COLUMNS}) FROM STDIN") as copy:
                    copy.write(_step_lines(next_step, ids, steps))
            next_step += count * steps
        print(f"W8 copied in {time.monotonic() - t0:.1f} s", flush=True)
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in saved:
            conn.execute(definition)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('workflows_step', 'id'), %s)", [next_step]
        )
        conn.commit()
    print(f"W8 indexed in {time.monotonic() - t0:.1f} s", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE workflows_run")
        conn.execute("VACUUM ANALYZE workflows_step")
    return time.monotonic() - t0


# --- pages ------------------------------------------------------------------------------------


def _timed(client: Any, url: str, requests: int, **headers: str) -> dict[str, Any]:
    from django.db import connection

    for _ in range(3):  # warm-up, untimed
        assert client.get(url, headers=headers, secure=True).status_code == 200
    # Counted with an execute wrapper: the request's own reset_queries empties the debug log
    # CaptureQueriesContext reads.
    queries: list[tuple[str, float]] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((sql, time.perf_counter() - t))

    with connection.execute_wrapper(count):
        assert client.get(url, headers=headers, secure=True).status_code == 200
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        response = client.get(url, headers=headers, secure=True)
        times.append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    times.sort()
    return {
        "p95_ms": round(times[max(0, int(round(0.95 * len(times))) - 1)], 2),
        "median_ms": round(statistics.median(times), 2),
        "queries": len(queries),
        "slowest_query_ms": round(max((t for _, t in queries), default=0) * 1000, 1),
        "slowest_query": max(queries, key=lambda q: q[1], default=("", 0))[0][:300],
    }


def measure_pages(requests: int = 50) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.test import Client

    from workflows.keys import create_api_key

    user = User.objects.create_superuser("bench-operator", "op@example.com", "x")
    client = Client()
    client.force_login(user)
    _, raw = create_api_key("bench", scopes=["runs:read"], rate_limit=10**9)
    return {
        "runs_page": _timed(client, "/runs/", requests),
        "api_list": _timed(Client(), "/api/runs", requests, authorization=f"Bearer {raw}"),
        "ops": _timed(client, "/ops/", requests),
    }


# --- prune beside W1 ------------------------------------------------------------------------------


def prune_process(days_ago: float) -> subprocess.Popen[bytes]:
    """The engine's prune in its own process, as the beat's ``workflows.prune`` task runs it,
    with ``now`` moved back so that only the runs finished before ``days_ago`` + retention are
    old enough. Prints ``{"deleted": n, "seconds": s}``."""
    code = (
        "import django, json, time; django.setup();"
        "from datetime import timedelta; from django.utils import timezone;"
        "from workflows.core.sweeper import prune;"
        f"t = time.monotonic(); n = prune(timezone.now() - timedelta(days={days_ago!r}));"
        "print(json.dumps({'deleted': n, 'seconds': time.monotonic() - t}))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ, stdout=subprocess.PIPE
    )


def prune_beside_w1(runs: int, prune_runs: int, w1: Any, limit_s: float = 300) -> dict[str, Any]:
    """``w1()`` returns W1's steps/s; it runs alone twice, then again and again while the prune
    deletes the oldest ``prune_runs`` of ``runs``. A prune still going after ``limit_s`` is
    stopped (its open batch rolls back) and its rate taken from the runs gone so far
    (``stopped_early``)."""
    from django.conf import settings

    from workflows.models import Run

    history = Run.objects.exclude(workflow="bench.chain")
    alone = [w1() for _ in range(2)]
    retention = float(settings.SLUICE_RETENTION_DAYS)
    # Runs are spread evenly over HISTORY_DAYS ending an hour ago: the oldest prune_runs
    # finished before this many days ago.
    boundary = HISTORY_DAYS * (1 - prune_runs / runs)
    before = history.count()
    t0 = time.monotonic()
    proc = prune_process(boundary - retention)
    beside = []
    stopped = False
    while proc.poll() is None:
        rate = w1()
        if proc.poll() is None:  # only W1 runs that ended while the prune was still going
            beside.append(rate)
        if time.monotonic() - t0 > limit_s and proc.poll() is None:
            proc.terminate()
            stopped = True
    out, _ = proc.communicate()
    elapsed = time.monotonic() - t0
    gone = before - history.count()
    if stopped:
        pruned = {"deleted": gone, "seconds": elapsed}
    else:
        pruned = json.loads(out.decode().strip().splitlines()[-1])
    w1_alone = statistics.median(alone)
    w1_beside = statistics.median(beside) if beside else None
    return {
        "prune_runs": pruned["deleted"],
        "prune_s": round(pruned["seconds"], 2),
        "prune_runs_per_s": round(pruned["deleted"] / pruned["seconds"], 1),
        "stopped_early": stopped,
        "rows_gone": gone,
        "w1_alone_steps_per_s": round(w1_alone, 1),
        "w1_beside_steps_per_s": round(w1_beside, 1) if w1_beside else None,
        "w1_beside_runs": len(beside),
        "w1_loss_pct": round(100 * (1 - w1_beside / w1_alone), 1) if w1_beside else None,
    }


def run_w8(server_url: str, scale: float, requests: int, w1: Any) -> dict[str, Any]:
    """The whole of W8 in ``bench_history`` on ``server_url``'s server; Django must already be
    set up on that database (``bench/run.py`` does it)."""
    runs = int(1_000_000 * scale)
    dsn = server_url.replace("postgres://", "postgresql://", 1)
    load_s = load_history(dsn, runs)
    result: dict[str, Any] = {
        "runs": runs,
        "journal_rows": runs * STEPS_PER_RUN,
        "scale": scale,
        "load_s": round(load_s, 1),
    }
    print("W8 loaded", json.dumps(result), flush=True)
    result.update(measure_pages(requests))
    print("W8 pages", json.dumps(result), flush=True)
    result["prune"] = prune_beside_w1(runs, max(1, runs // 10), w1)
    return result
