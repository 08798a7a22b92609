"""Child process for the DBOS peer. Imports ``dbos``; only ever run as ``python -m``.

Protocol (stdout lines prefixed by ``_common.MSG_PREFIX``, stdin lines from the parent):
  child -> {"ready": true}            after DBOS.launch() and the warm-up
  parent -> "go"
  child -> {"t0": ..., "t1": ..., ...} timings on time.monotonic() (system-wide on Linux,
                                        so comparable between processes)
"""

from __future__ import annotations

import argparse
import sys
import time

from dbos import DBOS, DBOSConfig

from bench.peers._common import send_msg

QUEUE_NAME = "bench_w1"


@DBOS.step()
def add_one(x: int) -> int:
    return x + 1


@DBOS.workflow()
def chain(x: int, steps: int) -> int:
    for _ in range(steps):
        x = add_one(x)
    return x


def _launch(sys_db_url: str, executor_id: str) -> None:
    config: DBOSConfig = {
        "name": "sluice-bench-dbos",
        "system_database_url": sys_db_url,
        "executor_id": executor_id,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


def _warm_up(n: int, steps: int) -> None:
    handles = [DBOS.start_workflow(chain, 0, steps) for _ in range(n)]
    for h in handles:
        assert h.get_result() == steps


def _wait_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


def main_w1(a: argparse.Namespace) -> None:
    _launch(a.sysdb, a.executor_id)
    _warm_up(a.warmup, a.steps)
    if a.dispatch == "queue":
        # Each process registers the same database-backed queue and dequeues from it;
        # only the producer (index 0) enqueues.
        DBOS.register_queue(QUEUE_NAME, polling_interval_sec=a.poll)
        # let the queue thread (1 s check interval) pick the queue up before timing
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            import threading

            if any(t.name == f"queue-worker-{QUEUE_NAME}" for t in threading.enumerate()):
                break
            time.sleep(0.05)
    send_msg({"ready": True})
    _wait_go()
    t0 = time.monotonic()
    if a.dispatch == "queue":
        if a.count:
            handles = [DBOS.enqueue_workflow(QUEUE_NAME, chain, 0, a.steps) for _ in range(a.count)]
            results = [h.get_result() for h in handles]
        else:
            results = []
            # non-producers just serve the queue until told to stop
            sys.stdin.readline()
    else:
        handles = [DBOS.start_workflow(chain, 0, a.steps) for _ in range(a.count)]
        results = [h.get_result() for h in handles]
    t1 = time.monotonic()
    bad = sum(1 for r in results if r != a.steps)
    executors = {}
    if a.dispatch == "queue" and a.count:
        for h in handles:
            ex = h.get_status().executor_id
            executors[ex] = executors.get(ex, 0) + 1
    send_msg({"t0": t0, "t1": t1, "count": len(results), "bad": bad, "executors": executors})
    DBOS.destroy()


def main_w3(a: argparse.Namespace) -> None:
    _launch(a.sysdb, a.executor_id)
    _warm_up(a.warmup, 10)
    chain(0, min(a.steps, 100))  # warm the direct-call path too
    samples = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        r = chain(0, a.steps)
        t1 = time.perf_counter()
        assert r == a.steps, r
        samples.append(t1 - t0)
    send_msg({"samples": samples})
    DBOS.destroy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=["w1", "w3"])
    p.add_argument("--sysdb", required=True)
    p.add_argument("--executor-id", default="bench-0")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--dispatch", choices=["direct", "queue"], default="direct")
    p.add_argument("--poll", type=float, default=1.0)
    a = p.parse_args(argv)
    (main_w1 if a.workload == "w1" else main_w3)(a)


if __name__ == "__main__":
    main()
