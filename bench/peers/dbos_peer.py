"""DBOS Transact peer for the Sluice benchmark (dbos==3.4.0, PostgreSQL system database).

Nothing here imports ``dbos``: every measurement runs in fresh ``python -m
bench.peers._dbos_child`` subprocesses, so DBOS's process-global singleton and registry
never touch the caller. Before each measurement the DBOS system database (``bench_dbos``
by default, on the server ``database_url`` points at) is dropped WITH (FORCE) and
recreated, so runs don't accumulate rows (and dropped again afterwards). DBOS 3.x needs
only the system database here (no ``@DBOS.transaction``, so no application database).

Workload code (``_dbos_child.py``)::

    @DBOS.step()
    def add_one(x): return x + 1

    @DBOS.workflow()
    def chain(x, steps):
        for _ in range(steps): x = add_one(x)
        return x

Every step is checkpointed by DBOS in PostgreSQL (one ``operation_outputs`` row per step),
which is the durability Sluice also pays for.

W1, "2 worker processes" (``run_w1(..., workers=2)``): DBOS has no worker-process model;
a DBOS process runs workflows as threads and CPython's GIL holds one process to about
one core. The fair counterpart of Sluice's 2 worker processes on this 2-core machine is
therefore 2 DBOS processes sharing one system database (distinct ``executor_id``), each
of which starts its half of the runs with ``DBOS.start_workflow`` at the same moment
(``dispatch="direct"``, the default; the issue asks for "200 workflows started at once").
Both processes are launched and warmed up (10 workflows each, not timed) before a "go"
is released to both; wall time is from the earlier process's first start to the later
process's last ``get_result()`` on the shared system-wide monotonic clock. ``workers=1``
measures one process starting all runs.

``dispatch="queue"`` is the broker-like alternative: both processes listen to one
database-backed DBOS queue (``DBOS.register_queue`` - queues cannot be constructed
directly in 3.4) and process 0 enqueues all runs with ``DBOS.enqueue_workflow``. DBOS
queues are polled (``poll`` seconds, DBOS default 1.0), so this also includes dequeue
latency and whatever split the two pollers happen to claim (reported in
``executors``).

W3 (``run_w3``): one process, launched and warmed up, then one workflow of ``steps``
sequential steps called directly (synchronously in the calling thread); ms per step =
wall / steps. ``repeat`` > 1 runs it several times and reports the median.

CLI (from the repo root with the venv python)::

    python -m bench.peers.dbos_peer w1 [--runs 200 --steps 10 --workers 2 --dispatch direct]
    python -m bench.peers.dbos_peer w3 1000 [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.peers._common import (
    drop_database,
    read_msg,
    recreate_database,
    spawn_child,
    with_database,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHILD = "bench.peers._dbos_child"


def _stop(procs, timeout: float = 60.0) -> None:
    for p in procs:
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            p.kill()
            p.wait()


def run_w1(
    database_url: str,
    runs: int = 200,
    steps: int = 10,
    workers: int = 2,
    *,
    dispatch: str = "direct",
    poll: float = 1.0,
    warmup: int = 10,
    dbname: str = "bench_dbos",
) -> dict:
    """W1: ``runs`` workflows of ``steps`` DBOS steps over ``workers`` DBOS processes.

    Returns {"steps_per_s", "wall_s", "steps"} plus "workers", "dispatch" and, for the
    queue dispatch, "executors" (workflows run per process).
    """
    if dispatch not in ("direct", "queue"):
        raise ValueError(dispatch)
    sysdb = with_database(database_url, dbname)
    recreate_database(database_url, dbname)
    if dispatch == "direct":
        counts = [runs // workers + (1 if i < runs % workers else 0) for i in range(workers)]
    else:
        counts = [runs] + [0] * (workers - 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dbos-"))
    procs, errs = [], []
    try:
        # Launch one at a time: concurrent DBOS.launch() on a fresh database would race
        # to run the system-database migrations.
        for i, count in enumerate(counts):
            err = tmp / f"child{i}.stderr"
            p = spawn_child(
                CHILD,
                [
                    "w1",
                    "--sysdb",
                    sysdb,
                    "--executor-id",
                    f"bench-{i}",
                    "--count",
                    str(count),
                    "--steps",
                    str(steps),
                    "--warmup",
                    str(warmup),
                    "--dispatch",
                    dispatch,
                    "--poll",
                    str(poll),
                ],
                err,
            )
            procs.append(p)
            errs.append(err)
            read_msg(p, err)  # ready
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        if dispatch == "direct":
            reports = [read_msg(p, e) for p, e in zip(procs, errs, strict=True)]
        else:
            reports = [read_msg(procs[0], errs[0])]
            for p in procs[1:]:
                p.stdin.write("stop\n")
                p.stdin.flush()
            reports += [read_msg(p, e) for p, e in zip(procs[1:], errs[1:], strict=True)]
            reports = reports[:1]
        _stop(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_database(database_url, dbname)
    done = sum(r["count"] for r in reports)
    bad = sum(r["bad"] for r in reports)
    if done != runs or bad:
        raise RuntimeError(f"DBOS W1: {done}/{runs} workflows returned, {bad} wrong results")
    wall = max(r["t1"] for r in reports) - min(r["t0"] for r in reports)
    total = runs * steps
    out = {
        "steps_per_s": total / wall,
        "wall_s": wall,
        "steps": total,
        "workers": workers,
        "dispatch": dispatch,
    }
    if dispatch == "queue":
        out["executors"] = reports[0]["executors"]
        out["poll_s"] = poll
    return out


def run_w3(
    database_url: str, steps: int, *, repeat: int = 1, warmup: int = 10, dbname: str = "bench_dbos"
) -> dict:
    """W3: one workflow of ``steps`` sequential steps in one DBOS process.

    Returns {"ms_per_step", "wall_s"} (median over ``repeat`` runs) plus "steps" and
    "samples_wall_s".
    """
    sysdb = with_database(database_url, dbname)
    recreate_database(database_url, dbname)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dbos-"))
    err = tmp / "child.stderr"
    p = spawn_child(
        CHILD,
        [
            "w3",
            "--sysdb",
            sysdb,
            "--steps",
            str(steps),
            "--repeat",
            str(repeat),
            "--warmup",
            str(warmup),
        ],
        err,
    )
    try:
        samples = read_msg(p, err)["samples"]
        _stop([p])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_database(database_url, dbname)
    wall = statistics.median(samples)
    return {
        "ms_per_step": wall * 1000.0 / steps,
        "wall_s": wall,
        "steps": steps,
        "samples_wall_s": samples,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers.dbos_peer")
    ap.add_argument("--database-url", default=DEFAULT_URL)
    sub = ap.add_subparsers(dest="workload", required=True)
    w1 = sub.add_parser("w1")
    w1.add_argument("--runs", type=int, default=200)
    w1.add_argument("--steps", type=int, default=10)
    w1.add_argument("--workers", type=int, default=2)
    w1.add_argument("--dispatch", choices=["direct", "queue"], default="direct")
    w1.add_argument("--poll", type=float, default=1.0)
    w3 = sub.add_parser("w3")
    w3.add_argument("steps", type=int)
    w3.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    if a.workload == "w1":
        res = run_w1(a.database_url, a.runs, a.steps, a.workers, dispatch=a.dispatch, poll=a.poll)
    else:
        res = run_w3(a.database_url, a.steps, repeat=a.repeat)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
