"""Workflows with undos (``compensate=``) for the compensation tests, in-process and on real
workers. Every call is logged in order (``LOG``, and the file ``SLUICE_TEST_CALL_LOG`` when
set, so that a test can read what worker processes did)."""

from __future__ import annotations

import os
import time
from typing import Any

from workflows import NonRetryableError, RetryPolicy, step, workflow

LOG: list[str] = []

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, jitter=False)


def log(entry: str) -> None:
    LOG.append(entry)
    path = os.environ.get("SLUICE_TEST_CALL_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(entry + "\n")


def logged() -> list[str]:
    path = os.environ.get("SLUICE_TEST_CALL_LOG")
    if path:
        if not os.path.exists(path):
            return []
        with open(path) as fh:
            return [line.strip() for line in fh if line.strip()]
    return list(LOG)


@step(retry=FAST)
def unbook(name: str, result: str) -> str:
    log(f"undo:{name}")
    return f"cancelled {result}"


@step(retry=FAST, compensate=unbook)
def book(name: str) -> str:
    log(f"do:{name}")
    return f"ref-{name}"


@step(retry=FAST)
def fail(reason: str) -> None:
    log("fail")
    raise NonRetryableError(reason)


@workflow(name="test.saga")
def saga(ctx: Any, names: list[str], fail_at_end: bool = True) -> list[str]:
    refs = [ctx.run(book, name) for name in names]
    if fail_at_end:
        ctx.run(fail, "sold out")
    return refs


@step(retry=FAST)
def flaky_unbook(name: str, result: str) -> str:
    """Fails its first attempt (per name): retried with its own RetryPolicy."""
    log(f"try-undo:{name}")
    if logged().count(f"try-undo:{name}") < 2:
        raise RuntimeError(f"{name}: the cancellation service is busy")
    log(f"undo:{name}")
    return f"cancelled {result}"


@step(retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01, jitter=False))
def broken_unbook(name: str, result: str) -> str:
    log(f"try-undo:{name}")
    raise RuntimeError(f"{name}: cannot cancel")


UNDOS = {"flaky": flaky_unbook, "broken": broken_unbook}


@workflow(name="test.saga_undos")
def saga_undos(ctx: Any, undos: list[tuple[str, str]]) -> None:
    """Book each name with the undo named for it ("flaky", "broken" or the plain one), in
    order (a list: PostgreSQL's jsonb does not keep an object's key order)."""
    for name, which in undos:
        ctx.run(book, name, compensate=UNDOS.get(which, unbook))
    ctx.run(fail, "sold out")


@workflow(name="test.saga_wait")
def saga_wait(ctx: Any, names: list[str]) -> str:
    """Book, then wait for an event (a cancel comes meanwhile)."""
    for name in names:
        ctx.run(book, name)
    ctx.wait_for_event("go")
    return "done"


@workflow(name="test.saga_map")
def saga_map(ctx: Any, names: list[str]) -> None:
    """Fan-out branches with an undo each, then a failure: every branch is undone."""
    ctx.map(book, names)
    ctx.run(book, "after")
    ctx.run(fail, "sold out")


@step
def plain(name: str) -> str:
    log(f"plain:{name}")
    return name


@workflow(name="test.saga_none")
def saga_none(ctx: Any) -> None:
    ctx.run(plain, "x")
    ctx.run(fail, "no undos here")


@step(retry=RetryPolicy(max_attempts=3, initial_backoff=0.2, max_backoff=0.2, jitter=False))
def slow_unbook(name: str, result: str) -> str:
    """An undo that takes a while when its marker file exists (a worker is killed meanwhile)."""
    log(f"start-undo:{name}")
    marker = os.environ.get("SLUICE_TEST_SLOW_UNDO", "")
    if marker and os.path.exists(f"{marker}.{name}"):
        time.sleep(3)
    log(f"undo:{name}")
    return f"cancelled {result}"


@workflow(name="test.saga_slow")
def saga_slow(ctx: Any, names: list[str]) -> None:
    for name in names:
        ctx.run(book, name, compensate=slow_unbook)
    ctx.run(fail, "sold out")
