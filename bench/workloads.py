"""The workflows the benchmark runs (imported by the bench driver and its workers)."""

from __future__ import annotations

import time
from typing import Any

from workflows import RetryPolicy, step, workflow


@step
def add_one(x: int) -> int:
    return x + 1


@workflow(name="bench.chain")
def chain(ctx: Any, steps: int = 10, x: int = 0) -> int:
    for _ in range(steps):
        x = ctx.run(add_one, x)
    return x


@step(pool="bench20")
def nap(i: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return i


@workflow(name="bench.fanout", max_parallel=100)
def fanout(ctx: Any, n: int = 100, seconds: float = 0.2) -> int:
    return len(ctx.parallel([ctx.call(nap, i, seconds) for i in range(n)]))


@step(retry=RetryPolicy(max_attempts=3))
def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@workflow(name="bench.crash")
def crash(ctx: Any, seconds: float = 30) -> float:
    return ctx.run(hold, seconds)
