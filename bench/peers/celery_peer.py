"""Plain Celery peer for the Sluice benchmark: W1 as Celery chains (celery 5.x, Redis broker).

``run_w1`` runs a driver subprocess (so no Celery app enters the caller's process) that
starts its own ``celery worker`` subprocess(es) (see ``pool``) for the stand-alone app in
``bench/peers/celery_app.py`` - not the project's Celery config - on Redis DB 9 (FLUSHDB
before and after), then sends ``runs`` chains of ``steps`` tasks, each task returning
its input + 1 (``inc.s(0) | inc.s() | ... | inc_last.s(key)``), and stops the worker
(SIGTERM to each worker's process group, SIGKILL after 30 s).

Worker topology (``pool``): ``"prefork"`` (default) = one ``celery worker -P prefork
-c workers``; its single consumer process (which receives every message and hands it to
the pool over pipes) is the bottleneck here, so -c 2 is barely faster than -c 1.
``"solo"`` = ``workers`` separate ``celery worker -P solo`` processes, each consuming and
executing on its own: exactly ``workers`` processes, and plain Celery's best showing on
2 cores (~1.3-1.7x prefork's figure on this machine).

Timing: after a warm-up of 20 chains (not timed), from just before the first
``apply_async`` to the driver having seen every chain finish.

How completion is observed (``mode``):
  * ``"signal"`` (default): no result backend, ``task_ignore_result``; the chain's last
    task - which also returns input + 1 - RPUSHes its value to a Redis list and the
    driver BLPOPs it. This is the cheapest honest "chain finished" signal, i.e. the most
    favourable setting for plain Celery: intermediate results only travel inside the
    next task's message and nothing is persisted. Note Celery here stores no per-step
    state at all, whereas Sluice and DBOS commit every step to PostgreSQL.
  * ``"backend"``: Redis result backend; every task's result is stored and the driver
    waits on each chain's ``AsyncResult.get()`` - the textbook usage.

Acknowledgement (``acks``): ``"early"`` = Celery defaults (ack on receipt, prefetch
multiplier 4); ``"late"`` = acks_late, prefetch 1, reject on worker lost (what the Sluice
project configures for its own Celery).

Every chain's final value is checked (== steps); a wrong or missing one raises.

CLI (from the repo root with the venv python)::

    python -m bench.peers.celery_peer w1 [--runs 200 --steps 10 --workers 2 --mode signal
                                          --acks early --pool prefork]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.peers._common import REPO_ROOT, child_env, read_msg, send_msg, spawn_child

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
BENCH_DB = 9


def _with_db(url: str, db: int) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, f"/{db}", p.query, ""))


def _stop_worker(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown of the worker and its pool
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    # pool children share the group; make sure none outlives the main process
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_w1(
    broker_url: str,
    runs: int = 200,
    steps: int = 10,
    workers: int = 2,
    *,
    mode: str = "signal",
    acks: str = "early",
    pool: str = "prefork",
    warmup: int = 20,
    db: int = BENCH_DB,
    timeout: float = 300.0,
) -> dict:
    """W1: ``runs`` chains of ``steps`` tasks on one prefork worker with ``workers`` processes.

    Runs the driver in a ``python -m bench.peers.celery_peer _drive`` subprocess (which in
    turn starts the worker), so no Celery app or environment change enters the caller.
    Returns {"tasks_per_s", "wall_s", "tasks"} plus "workers", "mode", "acks".
    """
    if (
        mode not in ("signal", "backend")
        or acks not in ("early", "late")
        or pool not in ("prefork", "solo")
    ):
        raise ValueError((mode, acks, pool))
    args = {
        "broker_url": broker_url,
        "runs": runs,
        "steps": steps,
        "workers": workers,
        "mode": mode,
        "acks": acks,
        "pool": pool,
        "warmup": warmup,
        "db": db,
        "timeout": timeout,
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-celery-drv-"))
    err = tmp / "driver.stderr"
    p = spawn_child("bench.peers.celery_peer", ["_drive", json.dumps(args)], err)
    try:
        p.stdin.close()
        res = read_msg(p, err)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.terminate()  # SIGTERM: the driver's finally stops its worker
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _drive(
    broker_url: str,
    runs: int = 200,
    steps: int = 10,
    workers: int = 2,
    *,
    mode: str = "signal",
    acks: str = "early",
    pool: str = "prefork",
    warmup: int = 20,
    db: int = BENCH_DB,
    timeout: float = 300.0,
) -> dict:
    """Driver, run in its own process by :func:`run_w1`."""
    if mode not in ("signal", "backend") or acks not in ("early", "late"):
        raise ValueError((mode, acks))
    if steps < 1:
        raise ValueError("steps must be >= 1")
    url = _with_db(broker_url, db)
    env = {"BENCH_CELERY_BROKER": url, "BENCH_CELERY_MODE": mode, "BENCH_CELERY_ACKS": acks}
    # The driver (its own process) uses the same app module, configured the same way.
    os.environ.update(env)
    import redis
    from celery import chain

    from bench.peers import celery_app as capp

    r = redis.Redis.from_url(url)
    r.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    log = tmp / "worker.log"
    if pool == "prefork":
        pool_args = [["-P", "prefork", "-c", str(workers)]]
    else:
        pool_args = [["-P", "solo"] for _ in range(workers)]
    wprocs: list[subprocess.Popen] = []
    for i, pa in enumerate(pool_args):
        wprocs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.peers.celery_app",
                    "worker",
                    *pa,
                    "-Q",
                    capp.QUEUE,
                    "-n",
                    f"benchpeer-{os.getpid()}-{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "WARNING",
                ],
                cwd=str(REPO_ROOT),
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=open(log, "ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def make(key: str):
        return (
            chain(capp.inc.s(0), *[capp.inc.s() for _ in range(steps - 2)], capp.inc_last.s(key))
            if steps > 1
            else capp.inc_last.s(0, key)
        )

    def send_and_wait(n: int, deadline: float) -> tuple[float, float, list[int]]:
        key = f"bench:done:{uuid.uuid4().hex}"
        t0 = time.monotonic()
        results = [make(key).apply_async() for _ in range(n)]
        values: list[int] = []
        if mode == "signal":
            while len(values) < n:
                left = deadline - time.monotonic()
                if left <= 0 or any(w.poll() is not None for w in wprocs):
                    break
                got = r.blpop([key], timeout=min(left, 5))
                if got:
                    values.append(int(got[1]))
        else:
            for res in results:
                values.append(res.get(timeout=max(0.1, deadline - time.monotonic())))
        t1 = time.monotonic()
        if len(values) != n:
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"Celery W1: {len(values)}/{n} chains finished; worker log:\n{tail}")
        return t0, t1, values

    try:
        send_and_wait(warmup, time.monotonic() + 120)  # also waits for the worker to be up
        r.delete(*r.keys("bench:done:*") or ["_"])
        t0, t1, values = send_and_wait(runs, time.monotonic() + timeout)
    finally:
        for w in wprocs:
            _stop_worker(w)
        try:
            r.flushdb()
        finally:
            r.close()
            try:
                capp.app.close()
            except Exception:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    bad = sum(1 for v in values if v != steps)
    if bad:
        raise RuntimeError(f"Celery W1: {bad} chains returned a wrong value")
    wall = t1 - t0
    tasks = runs * steps
    return {
        "tasks_per_s": tasks / wall,
        "wall_s": wall,
        "tasks": tasks,
        "workers": workers,
        "mode": mode,
        "acks": acks,
        "pool": pool,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_drive"]:
        # SIGTERM -> SystemExit so _drive's finally stops the worker
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        send_msg(_drive(**json.loads(argv[1])))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.peers.celery_peer")
    ap.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER,
        help="Redis server URL; its DB number is replaced by 9",
    )
    sub = ap.add_subparsers(dest="workload", required=True)
    w1 = sub.add_parser("w1")
    w1.add_argument("--runs", type=int, default=200)
    w1.add_argument("--steps", type=int, default=10)
    w1.add_argument("--workers", type=int, default=2)
    w1.add_argument("--mode", choices=["signal", "backend"], default="signal")
    w1.add_argument("--acks", choices=["early", "late"], default="early")
    w1.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    a = ap.parse_args(argv)
    print(
        json.dumps(
            run_w1(a.broker_url, a.runs, a.steps, a.workers, mode=a.mode, acks=a.acks, pool=a.pool)
        )
    )


if __name__ == "__main__":
    main()
