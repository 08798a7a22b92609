"""Workflows shared by tests of several packages and imported by real worker processes
(``tests/live.py`` sets SLUICE_WORKFLOW_MODULES=tests.sample_workflows).

A workflow only one test module uses is defined in that module and started by object
(``start(parent_wf, ...)``, see tests/workflows/test_waits.py); tests here import this module
as ``samples`` and start ``samples.chain`` etc. by object too. The API and operator tests still
name these over HTTP ("test.chain"), as a client does.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from workflows import NonRetryableError, RetryPolicy, step, workflow

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1
    path = os.environ.get("SLUICE_TEST_CALL_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(name + "\n")


@step
def add_one(x: int) -> int:
    _count("add_one")
    return x + 1


@step
def double(x: int) -> int:
    _count("double")
    return x * 2


@workflow(name="test.chain", version=1)
def chain(ctx: Any, n: int = 3, start: int = 0) -> int:
    value = start
    for _ in range(n):
        value = ctx.run(add_one, value)
    return value


@step(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, jitter=False))
def flaky(key: str, failures: int) -> str:
    """Fails ``failures`` times per key (counted in the database-free CALLS dict or a file)."""
    _count(f"flaky:{key}")
    path = os.environ.get("SLUICE_TEST_CALL_LOG")
    seen = CALLS[f"flaky:{key}"]
    if path and os.path.exists(path):
        with open(path) as fh:
            seen = sum(1 for line in fh if line.strip() == f"flaky:{key}")
    if seen <= failures:
        raise RuntimeError(f"flaky failure {seen}")
    return f"ok after {seen}"


@workflow(name="test.flaky")
def flaky_wf(ctx: Any, key: str, failures: int = 1) -> str:
    return ctx.run(flaky, key, failures)


@step(retry=RetryPolicy(max_attempts=5))
def refuse(reason: str) -> None:
    raise NonRetryableError(reason)


@workflow(name="test.refuse")
def refuse_wf(ctx: Any, reason: str = "no") -> None:
    ctx.run(refuse, reason)


@workflow(name="test.fanout", max_parallel=3)
def fanout(ctx: Any, items: list[int]) -> dict[str, Any]:
    doubled = ctx.map(double, items)
    a, b = ctx.parallel([ctx.call(add_one, 1), ctx.call(double, 5)])
    return {"doubled": doubled, "pair": [a, b]}


@workflow(name="test.sleep")
def sleeper(ctx: Any, seconds: float = 60) -> str:
    before = ctx.now()
    ctx.sleep(timedelta(seconds=seconds))
    return before.isoformat()


@workflow(name="test.event")
def waiter(ctx: Any, timeout: float = 3600) -> Any:
    first = ctx.run(add_one, 0)
    ev = ctx.wait_for_event("approved", timeout=timedelta(seconds=timeout), default={"by": None})
    return {"first": first, "event": ev}


@workflow(name="test.parent_waiting_child")
def parent_waiting_child(ctx: Any) -> Any:
    return ctx.run_workflow("test.event", {})


@step
def big(n: int) -> str:
    return "x" * n


@workflow(name="test.big")
def big_wf(ctx: Any, n: int) -> int:
    return len(ctx.run(big, n))


@step(pool="limited")
def limited_sleep(x: int) -> int:
    time.sleep(0.05)
    return x


@workflow(name="test.limited", max_parallel=50)
def limited(ctx: Any, n: int = 6) -> list[int]:
    return ctx.map(limited_sleep, list(range(n)))


@step(retry=RetryPolicy(max_attempts=2))
def suicide(marker: str) -> str:
    """Kills its own worker process the first time (marker file absent)."""
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(os.getpid(), 9)
    return "survived"


@workflow(name="test.suicide")
def suicide_wf(ctx: Any, marker: str) -> str:
    a = ctx.run(add_one, 1)
    return f"{a}:{ctx.run(suicide, marker)}"


@step(retry=RetryPolicy(max_attempts=2))
def always_suicide() -> None:
    os.kill(os.getpid(), 9)


@workflow(name="test.always_suicide")
def always_suicide_wf(ctx: Any) -> None:
    ctx.run(always_suicide)


@step
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@workflow(name="test.nap_chain")
def nap_chain(ctx: Any, n: int = 5, seconds: float = 0.5) -> int:
    for _ in range(n):
        ctx.run(nap, seconds)
    return n


@step
def costly(x: int) -> int:
    from workflows import record_usage

    record_usage(cost=0.4, input_tokens=100, output_tokens=20, model="offline")
    return x + 1


@workflow(name="test.budget")
def budget(ctx: Any, n: int = 5) -> int:
    value = 0
    for _ in range(n):
        try:
            value = ctx.run(costly, value)
        except Exception:  # a broad except must not be able to spend past the budget
            pass
    return value


@step(pool="limited")
def limited_nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@workflow(name="test.limited_naps", max_parallel=50)
def limited_naps(ctx: Any, n: int = 6, seconds: float = 1.0) -> list[float]:
    return ctx.map(limited_nap, [seconds] * n)
