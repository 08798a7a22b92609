"""Sluice benchmark: W1, W2, W3, W6, W7, W8 and W1's worker scaling measured here; peers
(DBOS, plain Celery) side by side; W4/W5 in bench/reviews_bench.py.

Run with ``make bench`` (all), or ``bench/run.py --only W7`` for some. It starts with a
calibration table, so that figures from different days can be compared: one bare durable
single-row commit (psycopg in a loop, pgbench's ``UPDATE … SET abalance = abalance + d``),
DBOS's and plain Celery's W1 (whose figures W1's ratios then use). Everything runs on this
machine's PostgreSQL and Redis in databases of its own (``bench_sluice``, or
``BENCH_DB_NAME``; DBOS uses ``bench_dbos``; Redis ``BENCH_BROKER_URL``, default db 10, for
Sluice, db 9 for Celery), created fresh and dropped afterwards. Figures are printed and merged
into bench/results.json (keys of workloads not run are kept).

- W1: 200 runs x 10 sequential trivial steps, 2 worker processes (``celery worker -P threads
  -c 8`` each, every thread warmed up first): steps/s from the first ``start()`` to the last
  run's ``finished_at``.
- W2: one run fanning out 100 steps of 200 ms (sleep) in a pool limited to 20 (two worker
  processes of 10 threads): wall time from ``start()`` to the run finished, over the ideal 1.0 s.
- W3: one run of 1,000 sequential steps and one of 10, one worker: ms per step from the run's
  ``started_at`` to ``finished_at`` (the engine's time; the doorbell's latency is excluded).
- W6: SIGKILL of the worker (parent and children) holding a running step; seconds until the
  step runs again (attempt 2) on a second worker, with the default lease and sweep settings.
- W7: ``POST /api/runs`` under gunicorn (4 workers), 32 concurrent clients (bench/api_bench.py).
- SCALE: W1 with 1, 2 and 4 worker processes; efficiency = steps/s / (n x one process's).
- W8: 1,000,000 finished runs and 10,000,000 journal rows loaded with COPY; the runs list, the
  API list and the ops overview; the retention prune beside W1 (bench/history_bench.py).
  ``--w8-scale 0.01`` runs it at 1 % (written under ``W8_scale_0.01``, never as ``W8``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as ``python bench/run.py`` from anywhere

from bench.procs import CeleryProcesses  # noqa: E402

SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/10")
DBNAME = os.environ.get("BENCH_DB_NAME", "bench_sluice")
RESULTS = ROOT / "bench" / "results.json"
LOGS = ROOT / "var" / "bench"
# W1's two worker processes each run this many threads: a step mostly waits for PostgreSQL's
# commit, and threads let one process overlap those waits (DBOS runs its workflows as threads,
# one per workflow). Eight, measured against 4, 6 and 12 with every thread warmed up: 2,644-2,690
# steps/s against 2,454-2,484 (4), 2,519-2,576 (6) and 2,579-2,599 (12); more commits in
# flight let PostgreSQL flush more of them with one WAL write (docs/performance.md).
W1_POOL = os.environ.get("BENCH_W1_POOL", "threads")
W1_THREADS = int(os.environ.get("BENCH_W1_THREADS", "8"))


def _db_url(name: str) -> str:
    base, _, _ = SERVER.rpartition("/")
    return f"{base}/{name}"


def _setup_env() -> None:
    os.environ["DATABASE_URL"] = _db_url(DBNAME)
    os.environ["CELERY_BROKER_URL"] = BROKER
    os.environ["SLUICE_WORKFLOW_MODULES"] = "bench.workloads"
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.setdefault("SLUICE_LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))


def _recreate_db() -> None:
    import psycopg

    with psycopg.connect(SERVER.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DBNAME}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=os.environ
    )


def _drop_db() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(SERVER.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')


class Workers(CeleryProcesses):
    def __init__(self) -> None:
        super().__init__(LOGS)


def _flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER).flushdb()


def _reset_tables() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "TRUNCATE workflows_run, workflows_step, workflows_event, workflows_blob CASCADE"
        )


def _wait_runs(ids: list[Any], timeout: float = 300) -> None:
    """Wait until every run in ``ids`` succeeded (raise if one failed or was canceled).

    The figures come from the runs' own timestamps, not from when this loop notices, so the
    loop only has to stay out of the way of the workers it measures: each look asks about the
    first ``_WAIT_CHUNK`` runs still open (they finish roughly in the order they started) by
    their primary keys. Asking about all of them at once took a sequential scan of the runs
    table every 20 ms (0.7 ms of PostgreSQL's CPU a look at 600 runs, auto_explain); before
    that, two ORM queries took 1.5 ms of this process's CPU a look."""
    from django.db import connection

    from workflows.models import Run

    sql = f"SELECT id, status FROM {Run._meta.db_table} WHERE id = ANY(%s)"
    open_ = list(ids)
    deadline = time.monotonic() + timeout
    connection.ensure_connection()
    # psycopg's own cursor, prepared after its second use (a look planned for each call
    # costs PostgreSQL more than it runs: perf, W2's fan-out); at most _WAIT_CHUNK keys a look
    # keep even a sequential-scan plan of the runs cheap.
    with connection.connection.cursor() as cur:

        def look(keys: list[Any]) -> set[Any]:
            """The runs of ``keys`` that ended; raise for one that failed or was canceled."""
            cur.execute(sql, [keys])
            ended = {run_id: status for run_id, status in cur.fetchall() if status in _ENDED}
            failed = [run_id for run_id, status in ended.items() if status != "succeeded"]
            if failed:
                run = Run.objects.filter(pk=failed[0]).first()
                raise RuntimeError(f"bench run failed: {run.error if run else '?'}")
            return set(ended)

        looks = 0
        while time.monotonic() < deadline:
            looks += 1
            # Now and then (and at the end) every open run, so that one that failed behind
            # the first few is reported at once.
            keys = open_ if looks % 50 == 0 else open_[:_WAIT_CHUNK]
            finished = look(keys)
            open_ = [run_id for run_id in open_ if run_id not in finished]
            if not open_:
                return
            if len(finished) < len(keys):
                time.sleep(0.02)
        look(open_)
    raise TimeoutError("bench runs did not finish")


_ENDED = {"succeeded", "failed", "canceled"}
_WAIT_CHUNK = 20


def _warm_up(n: int = 10, reset: bool = True, steps: int = 2) -> None:
    """``n`` runs of ``steps`` steps, started at once, untimed. Started together, so that every
    worker thread takes some: a thread pool starts a new thread only when none is idle, and a
    thread's first runs pay for its database connection and its statements' first plans."""
    from workflows import start

    _wait_runs([start("bench.chain", {"steps": steps}).pk for _ in range(n)])
    if reset:
        _reset_tables()


def sluice_w1(
    runs: int = 200, steps: int = 10, workers: int = 2, reset: bool = True
) -> dict[str, float]:
    """W1 with ``workers`` worker processes; ``reset=False`` leaves the tables' other rows
    alone (W8 runs it beside a history it must keep)."""
    from django.db.models import Max

    from workflows import start
    from workflows.models import Run

    _flush_broker()
    workers_ = Workers()
    try:
        for i in range(workers):
            workers_.start(f"w1-{i}", pool=W1_POOL, concurrency=W1_THREADS)
        # As the peers are warmed up (DBOS: 10 workflows in each process), but enough for
        # every thread of both workers: four runs of the timed size each, all at once.
        _warm_up(4 * workers * W1_THREADS, reset=reset, steps=steps)
        from django.utils import timezone

        t0 = timezone.now()
        ids = [start("bench.chain", {"steps": steps}).pk for _ in range(runs)]
        _wait_runs(ids)
        end = Run.objects.filter(pk__in=ids).aggregate(m=Max("finished_at"))["m"]
        wall = (end - t0).total_seconds()
    finally:
        workers_.stop()
    if reset:
        _reset_tables()
    return {"steps_per_s": runs * steps / wall, "wall_s": wall, "steps": runs * steps}


def sluice_w3(steps: int) -> dict[str, float]:
    from workflows import get_run, start

    _flush_broker()
    workers = Workers()
    try:
        workers.start("w3")
        _warm_up(3)
        run = start("bench.chain", {"steps": steps})
        _wait_runs([run.pk])
        run = get_run(run.pk)
        engine_s = (run.finished_at - run.started_at).total_seconds()
    finally:
        workers.stop()
    _reset_tables()
    return {"ms_per_step": engine_s * 1000 / steps, "run_s": engine_s}


def sluice_w2(n: int = 100, limit: int = 20) -> dict[str, float]:
    from workflows import get_run, start
    from workflows.models import Pool

    _flush_broker()
    Pool.objects.update_or_create(name="bench20", defaults={"max_concurrency": limit})
    workers = Workers()
    try:
        # Two worker processes of limit/2 threads: two consumers hand out the first wave's
        # doorbells twice as fast, and no more threads than slots keeps the GIL quiet.
        names = ("w2a", "w2b")
        # Each process's connections carry its name (libpq's PGAPPNAME), so that the warm-up
        # can count them.
        workers.start(names[0], pool="threads", concurrency=max(1, limit // 2), PGAPPNAME=names[0])
        workers.start(
            names[1], pool="threads", concurrency=max(1, limit - limit // 2), PGAPPNAME=names[1]
        )
        _warm_up(3)
        _warm_branch_threads(names, limit)
        t0 = time.time()
        run = start("bench.fanout", {"n": n})
        _wait_runs([run.pk], timeout=120)
        run = get_run(run.pk)
        wall = run.finished_at.timestamp() - t0
        from workflows.models import Step

        peak = _peak_concurrency(
            list(
                Step.objects.filter(run=run, branch__gte=0).values_list("started_at", "finished_at")
            )
        )
    finally:
        workers.stop()
    _reset_tables()
    ideal = n * 0.2 / limit
    return {"wall_s": wall, "ratio_to_ideal": wall / ideal, "ideal_s": ideal, "peak_running": peak}


def _warm_branch_threads(names: tuple[str, ...], limit: int, tries: int = 8) -> None:
    """Warm every worker process's branch threads (their database connections and prepared
    statements), as the peers are warmed up: short fan-outs over the same pool, not timed,
    until each process holds a batch's worth of connections.

    One fan-out is not enough. Its slots are rung for in batches of ``SLUICE_BRANCH_BATCH``,
    and one process's consumer often takes every batch, so the other process never starts a
    branch thread. When the timed run then gave it a batch, its threads connected to
    PostgreSQL at the end of their first branch, 6-43 ms each with the other process's
    completions on the same two cores (a W2 timeline: the first wave boundary cost that
    process's slots 70-100 ms)."""
    from django.conf import settings
    from django.db import connection

    from workflows import start

    need = max(1, int(settings.SLUICE_BRANCH_BATCH))  # a batch: its task's thread and the rest
    counts: dict[str, int] = {}
    for _ in range(tries):
        _wait_runs([start("bench.fanout", {"n": limit * 2, "seconds": 0.05}).pk], timeout=120)
        with connection.cursor() as cur:
            cur.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = ANY(%s) GROUP BY 1",
                [list(names)],
            )
            counts = dict(cur.fetchall())
        if all(counts.get(name, 0) >= need for name in names):
            return
    print(f"W2 warm-up: connections per process {counts}, wanted {need} each", flush=True)


def _peak_concurrency(spans: list[tuple[Any, Any]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def sluice_w6() -> dict[str, float]:
    from workflows import start
    from workflows.models import Step

    _flush_broker()
    workers = Workers()
    try:
        workers.beat()
        victim = workers.start("w6a", pool="prefork", concurrency=1)
        run = start("bench.crash", {"seconds": 30})
        deadline = time.monotonic() + 60
        row = None
        while time.monotonic() < deadline and row is None:
            row = Step.objects.filter(run=run, status="running").first()
            time.sleep(0.05)
        assert row is not None, "step never started"
        time.sleep(0.5)
        from workflows.models import Run

        owner = row.lease_owner or Run.objects.get(pk=run.pk).lease_owner
        os.kill(int(owner.split(":")[1]), signal.SIGKILL)
        os.killpg(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        workers.start("w6b", pool="prefork", concurrency=1)
        while time.monotonic() < killed + 60:
            if Step.objects.filter(run=run, status="running", attempt=2).exists():
                break
            time.sleep(0.05)
        recovery = time.monotonic() - killed
    finally:
        workers.stop()
    _reset_tables()
    return {"recovery_s": recovery}


def w1_scaling(repeat: int) -> dict[str, Any]:
    """W1 with 1, 2 and 4 worker processes (threads as in W1): steps/s (median of ``repeat``)
    and efficiency = steps/s / (n x the single process's steps/s)."""
    rates = {
        n: statistics.median(sluice_w1(workers=n)["steps_per_s"] for _ in range(repeat))
        for n in (1, 2, 4)
    }
    out: dict[str, Any] = {"cpu_cores": os.cpu_count(), "threads_per_process": W1_THREADS}
    for n, rate in rates.items():
        out[f"steps_per_s_{n}"] = round(rate, 1)
        out[f"efficiency_{n}"] = round(rate / (n * rates[1]), 3)
    return out


def bare_commit_ms(n: int = 3000, warmup: int = 300) -> dict[str, float]:
    """One durable single-row commit, as pgbench measures it: psycopg in autocommit, an
    ``UPDATE`` of one row by primary key per transaction, in a loop on one connection, against
    the same server and database as Sluice. Mean and median in milliseconds."""
    import psycopg

    with psycopg.connect(
        _db_url(DBNAME).replace("postgres://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_accounts (aid int PRIMARY KEY, abalance bigint)"
        )
        conn.execute(
            "INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, 1000) g "
            "ON CONFLICT DO NOTHING"
        )
        times = []
        for i in range(warmup + n):
            t = time.perf_counter()
            conn.execute(
                "UPDATE bench_accounts SET abalance = abalance + %s WHERE aid = %s",
                (i % 7 - 3, i % 1000 + 1),
            )
            if i >= warmup:
                times.append(time.perf_counter() - t)
        conn.execute("DROP TABLE bench_accounts")
    return {
        "commit_ms": round(statistics.mean(times) * 1000, 3),
        "commit_median_ms": round(statistics.median(times) * 1000, 3),
        "commits": n,
    }


def calibrate(repeat: int, peers: bool) -> dict[str, Any]:
    """The calibration table: bare commit latency, and the peers' W1 (medians of ``repeat``)."""
    out: dict[str, Any] = bare_commit_ms()
    if peers:
        from bench.peers import celery_peer, dbos_peer

        out["dbos_w1_steps_per_s"] = round(
            statistics.median(
                dbos_peer.run_w1(SERVER, runs=200, steps=10, workers=2)["steps_per_s"]
                for _ in range(repeat)
            ),
            1,
        )
        out["celery_w1_tasks_per_s"] = round(
            statistics.median(
                celery_peer.run_w1(
                    "redis://127.0.0.1:6379/9", runs=200, steps=10, workers=2, pool="solo"
                )["tasks_per_s"]
                for _ in range(repeat)
            ),
            1,
        )
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["cpu_cores"] = os.cpu_count()
    return out


def print_calibration(cal: dict[str, Any]) -> None:
    rows = [
        ("bare durable commit (psycopg loop, mean)", f"{cal['commit_ms']:.3f} ms"),
        ("bare durable commit (median)", f"{cal['commit_median_ms']:.3f} ms"),
    ]
    if "dbos_w1_steps_per_s" in cal:
        rows.append(
            ("DBOS W1 (200 x 10 steps, 2 processes)", f"{cal['dbos_w1_steps_per_s']} steps/s")
        )
        rows.append(
            ("plain Celery W1 (chains, 2 processes)", f"{cal['celery_w1_tasks_per_s']} tasks/s")
        )
    rows.append(("load average at start", " ".join(str(x) for x in cal["load_average"])))
    width = max(len(r[0]) for r in rows)
    print("calibration", flush=True)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="W1,W2,W3,W6,W7,SCALE,W8,W4,W5",
        help="comma-separated workloads (SCALE: W1 with 1, 2 and 4 worker processes)",
    )
    parser.add_argument(
        "--w8-scale",
        type=float,
        default=1.0,
        help="W8's history as a fraction of 1,000,000 runs (smoke runs; labelled in results)",
    )
    parser.add_argument("--w7-seconds", type=float, default=15.0, help="W7's measured time")
    parser.add_argument("--no-peers", action="store_true", help="skip DBOS and plain Celery")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of W1 and W2 (median)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    _setup_env()
    _recreate_db()
    import django

    django.setup()
    results: dict[str, Any] = {}
    try:
        cal: dict[str, Any] = {}
        if only & {"W1", "W3", "CAL"}:
            cal = calibrate(args.repeat, peers=not args.no_peers and "W1" in only)
            results["calibration"] = cal
            print_calibration(cal)
        if "W1" in only:
            w1 = [sluice_w1() for _ in range(args.repeat)]
            sl = statistics.median(r["steps_per_s"] for r in w1)
            entry: dict[str, Any] = {"sluice_steps_per_s": round(sl, 1)}
            if "dbos_w1_steps_per_s" in cal:
                dbos = cal["dbos_w1_steps_per_s"]
                cel = cal["celery_w1_tasks_per_s"]
                entry.update(
                    dbos_steps_per_s=dbos,
                    celery_tasks_per_s=cel,
                    ratio_vs_dbos=round(sl / dbos, 2),
                    ratio_vs_celery=round(sl / cel, 2),
                )
            results["W1"] = entry
            print("W1", json.dumps(entry), flush=True)
        if "W3" in only:
            s1000 = sluice_w3(1000)["ms_per_step"]
            s10 = sluice_w3(10)["ms_per_step"]
            entry = {
                "sluice_ms_per_step_1000": round(s1000, 3),
                "sluice_ms_per_step_10": round(s10, 3),
                "growth_ratio": round(s1000 / s10, 3),
            }
            if cal:
                entry["commit_ms"] = cal["commit_ms"]
                entry["ratio_to_commit"] = round(s1000 / cal["commit_ms"], 2)
            if not args.no_peers:
                from bench.peers import dbos_peer

                d1000 = dbos_peer.run_w3(SERVER, 1000)["ms_per_step"]
                d10 = dbos_peer.run_w3(SERVER, 10)["ms_per_step"]
                entry.update(
                    dbos_ms_per_step_1000=round(d1000, 3),
                    dbos_ms_per_step_10=round(d10, 3),
                    ratio_vs_dbos_1000=round(d1000 / s1000, 2),
                )
            results["W3"] = entry
            print("W3", json.dumps(entry), flush=True)
        if "W2" in only:
            w2s = sorted((sluice_w2() for _ in range(args.repeat)), key=lambda r: r["wall_s"])
            w2 = w2s[len(w2s) // 2]
            results["W2"] = {
                "wall_s": round(w2["wall_s"], 3),
                "ratio_to_ideal": round(w2["ratio_to_ideal"], 3),
                "peak_running": w2["peak_running"],
                "runs_wall_s": [round(r["wall_s"], 3) for r in w2s],
            }
            print("W2", json.dumps(results["W2"]), flush=True)
        if "W6" in only:
            results["W6"] = {"recovery_s": round(sluice_w6()["recovery_s"], 2)}
            print("W6", json.dumps(results["W6"]), flush=True)
        if "W7" in only:
            from bench.api_bench import run_w7

            _flush_broker()
            results["W7"] = run_w7(LOGS, seconds=args.w7_seconds)
            _flush_broker()
            _reset_tables()
            print("W7", json.dumps(results["W7"]), flush=True)
        if "SCALE" in only:
            results["W1_scaling"] = w1_scaling(args.repeat)
            print("W1_scaling", json.dumps(results["W1_scaling"]), flush=True)
        if "W8" in only:
            from bench.history_bench import run_w8

            w8 = run_w8(
                _db_url(DBNAME),
                args.w8_scale,
                requests=50,
                w1=lambda: sluice_w1(reset=False)["steps_per_s"],
            )
            # A smoke run at another scale never overwrites the full figure.
            key = "W8" if args.w8_scale == 1.0 else f"W8_scale_{args.w8_scale:g}"
            results[key] = w8
            print(key, json.dumps(w8), flush=True)
    finally:
        _drop_db()
    if {"W4", "W5"} & only:
        try:
            from bench import reviews_bench
        except ImportError:
            print("W4/W5: bench/reviews_bench.py not present", flush=True)
        else:
            if "W4" in only:
                results["W4"] = reviews_bench.run_w4()
                print("W4", json.dumps(results["W4"]), flush=True)
            if "W5" in only:
                results["W5"] = reviews_bench.run_w5()
                print("W5", json.dumps(results["W5"]), flush=True)
    # Read at the end, not the start: keys of workloads not run here (or of a run finished
    # meanwhile) are kept.
    merged: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.update(results)
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
