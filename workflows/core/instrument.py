"""The engine's instrumentation points: what it is working on, and what just happened.

The engine core imports nothing of the product, so metrics and log formats plug in here:

- **Log context.** ``run_scope`` / ``step_scope`` set context variables (run id, generation,
  step name and id) around advancing a run and executing a step; ``current()`` reads them.
  A logging filter or formatter (``config.logs``) copies them onto every log record, so each
  engine log line says which run and step it is about.
- **Events.** ``emit(name, **fields)`` calls every observer registered with ``observe()``.
  With no observer (the embedded default, unit tests) it is one empty-list check. An observer
  that raises is logged and ignored: instrumentation never breaks a step or a sweep.

Events the engine emits (fields in parentheses):

- ``step_finished`` (pool, seconds, outcome: succeeded | retrying | failed, usage, cost): a
  step's attempt ended, inline or queued; ``usage`` is what the step recorded (tokens, model).
- ``run_finished`` (status, workflow): a run reached a terminal state (its transaction may
  still roll back; counted as attempted ends).
- ``sweep_finished`` (result: the counts ``sweeper.sweep()`` returns): one sweep pass ended.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

Observer = Callable[..., None]
_observers: list[Observer] = []

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sluice_run", default=None)
_generation: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sluice_generation", default=None
)
_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("sluice_step", default=None)
_step_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sluice_step_id", default=None
)


def observe(observer: Observer) -> Observer:
    """Register ``observer(name, **fields)`` for every event (idempotent)."""
    if observer not in _observers:
        _observers.append(observer)
    return observer


def forget(observer: Observer) -> None:
    if observer in _observers:
        _observers.remove(observer)


def emit(name: str, **fields: Any) -> None:
    if not _observers:
        return
    for observer in list(_observers):
        try:
            observer(name, **fields)
        except Exception:
            log.exception("instrumentation observer %r failed on %s", observer, name)


@contextmanager
def run_scope(run_id: Any, generation: int | None) -> Iterator[None]:
    """Log context while a worker advances a run."""
    tokens = (_run_id.set(str(run_id)), _generation.set(generation))
    try:
        yield
    finally:
        _generation.reset(tokens[1])
        _run_id.reset(tokens[0])


@contextmanager
def step_scope(
    name: str, step_id: int | None, run_id: Any = None, generation: int | None = None
) -> Iterator[None]:
    """Log context while a step executes (inside ``run_scope`` for inline steps; a queued
    step names its run here)."""
    tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]] = [
        (_step, _step.set(name)),
        (_step_id, _step_id.set(step_id)),
    ]
    if run_id is not None:
        tokens.append((_run_id, _run_id.set(str(run_id))))
    if generation is not None:
        tokens.append((_generation, _generation.set(generation)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current() -> dict[str, Any]:
    """The log context of this thread: run_id, generation, step, step_id (None when unset)."""
    return {
        "run_id": _run_id.get(),
        "generation": _generation.get(),
        "step": _step.get(),
        "step_id": _step_id.get(),
    }


__all__ = ["current", "emit", "forget", "observe", "run_scope", "step_scope"]
