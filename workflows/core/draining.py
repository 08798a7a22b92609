"""Whether this worker is shutting down (a warm shutdown: SIGTERM from a deploy or a
supervisor, Ctrl-C in ``make run``).

A worker that shuts down warm finishes the task it is running, and a task of the engine can go
on for a long time: a finishing branch hands its pool slot to the next waiting step, run in the
same task (``executor._run_chain``), and so on while the pool has a backlog. Under a backlog the
"current task" never ended, the supervisor's grace ran out, and the worker was killed in the
middle of a step, which then ran again elsewhere: an LLM call paid twice. So the worker's main
process raises this flag when its shutdown begins (``config.celery``), and the engine stops a
chain after the step in hand: the step it was handed goes back to the pool, rung for, for a
worker that is not stopping.

The flag is shared memory created when this module is first imported, in the worker's main
process before it forks its pool (prefork), so every child reads the value the parent sets; a
threads pool is the same process.
"""

from __future__ import annotations

import multiprocessing

_flag = multiprocessing.RawValue("b", 0)


def begin() -> None:
    """This worker is shutting down: finish the step in hand, take no more."""
    _flag.value = 1


def draining() -> bool:
    return bool(_flag.value)


def reset() -> None:
    """The worker goes on after all (tests)."""
    _flag.value = 0


__all__ = ["begin", "draining", "reset"]
