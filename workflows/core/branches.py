"""Branch threads: where a worker process runs the branches of a batch doorbell at once.

A fan-out in a pool limited by concurrency reserves its free slots and rings for them in
batches (``doorbell.dispatch_batches_on_commit``): one message carries several branches
instead of one message per branch. Sending a Celery message costs about a millisecond of the
sender's CPU and as much again of the receiving consumer's, one after another, so with one
message per slot the last slot of a wide first wave started tens of milliseconds after the
first, and every later wave of those slots inherited the delay (a slot hands itself over to
the next waiting step; see ``executor.complete_step``). A batch's worker runs its first branch
in the task's own thread and the others here, in threads that outlive the task (each keeps
its database connection, as a Celery thread does), then waits for them, so the message is
acknowledged, and a warm shutdown waits, only when they are all done.

Why this may run more branches at once than the worker's ``-c``: only slots of a limited pool
come in batches, reserved in the database under the pool's ``max_concurrency``, which is the
bound that matters for them. Branches of unlimited pools still come one message each, so the
workers' concurrency bounds them as before. ``SLUICE_BRANCH_THREADS`` caps the threads of one
process; a branch that finds none free is rung for alone.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from workflows.core import dbconn

log = logging.getLogger(__name__)

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_pid: int | None = None
_busy = 0
_threads = 0


def _started() -> None:
    global _threads
    with _lock:
        _threads += 1


def _pool(limit: int) -> ThreadPoolExecutor:
    """This process's executor (made again after a fork). Call holding ``_lock``."""
    global _executor, _pid, _busy, _threads
    if _executor is None or _pid != os.getpid():
        _executor = ThreadPoolExecutor(
            max_workers=limit, thread_name_prefix="sluice-branch", initializer=_started
        )
        _pid, _busy, _threads = os.getpid(), 0, 0
    return _executor


def reserve(wanted: int) -> int:
    """Reserve up to ``wanted`` free branch threads; how many. Each is then given one job by
    ``start`` (or handed back by ``unreserve``). Never more than are free: a job must not queue
    behind a busy thread, whose branch may run for minutes while its slot waits."""
    global _busy
    limit = max(0, int(settings.SLUICE_BRANCH_THREADS))
    if wanted <= 0 or not limit:
        return 0
    with _lock:
        _pool(limit)
        got = max(0, min(wanted, limit - _busy))
        _busy += got
    return got


def unreserve(count: int) -> None:
    global _busy
    with _lock:
        _busy -= count


def start(job: Callable[[], int]) -> Future[int]:
    """Run ``job`` in a branch thread reserved by ``reserve``."""
    with _lock:
        pool = _executor
    assert pool is not None, "reserve() a branch thread first"
    return pool.submit(_run, job)


def _run(job: Callable[[], int]) -> int:
    global _busy
    dbconn.recycle()  # as Celery's task_prerun does for its own threads
    try:
        return job()
    except Exception:
        log.exception("a branch thread's job failed; the sweep will retry its step")
        return 0
    finally:
        dbconn.used()
        with _lock:
            _busy -= 1


def shutdown() -> None:
    """Close every branch thread's database connection and stop the threads (tests; a
    process that is about to drop its database)."""
    global _executor, _pid, _busy, _threads
    with _lock:
        pool, count = _executor, _threads
        _executor, _pid, _busy, _threads = None, None, 0, 0
    if pool is None:
        return
    if count:
        # One job per thread: each closes its own connection, then waits at the barrier until
        # every thread has one, so no thread takes two.
        barrier = threading.Barrier(count)

        def close() -> None:
            connection.close()
            barrier.wait(timeout=10)

        for _ in range(count):
            pool.submit(close)
    pool.shutdown(wait=True)
