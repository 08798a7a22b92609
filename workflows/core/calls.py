"""Calling step code: timeouts, error records, return types."""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

from django.conf import settings

# The duration checks live with the step definitions (a step's timeout is one); kept here too.
from workflows.core.definitions import MAX_WAIT_SECONDS as MAX_WAIT_SECONDS
from workflows.core.definitions import StepDef, type_hints
from workflows.core.definitions import duration_seconds as duration_seconds
from workflows.core.errors import NonRetryableError, PayloadTooLargeError, StepTimeout
from workflows.core.jsonvalues import encode_sorted, to_json

TRACEBACK_LIMIT = 8000
# An error message is stored on the step and on the run and shown by the run page, the API and
# the webhooks: a step raising with a 20 MB message made each of them 20 MB. Cut to this many
# characters, with a note of the length it had. A message that wraps one already cut (a run's
# StepFailed "step 'x' failed: Type: …", a parent's "child run … failed: …") is kept whole up to
# MESSAGE_SLACK characters longer, so the note of the first cut survives.
MESSAGE_LIMIT = 4000
MESSAGE_SLACK = 1000

log = logging.getLogger("workflows.steps")


def log_failed_attempt(
    name: str, run_id: Any, attempt: int, of: int, err: dict[str, Any], retry_in: float | None
) -> None:
    """One log line per failed attempt of a step (the log context adds the run and the step):
    a misconfiguration that fails every run (a provider key rejected) must reach log-based
    alerting, not only the run pages. A warning while it will be retried, an error when the
    step failed for good. The message is the journal's, already stored; no traceback."""
    what = f"step {name!r} of run {run_id} failed (attempt {attempt} of {of}): "
    text = f"{err.get('type', '')}: {str(err.get('message', ''))[:500]}"
    if retry_in is not None:
        log.warning("%s%s; retried in %.1f s", what, text, retry_in)
    else:
        log.error("%s%s", what, text)


def error_dict(exc: BaseException, **extra: Any) -> dict[str, Any]:
    """``exc`` as the JSON the journal records. Its texts come from the step (an LLM's raw
    answer among them), so they are made storable: a NUL or a lone surrogate, which
    PostgreSQL's jsonb refuses, is written as its escape instead of failing the write. And
    bounded: the message is cut to ``MESSAGE_LIMIT`` characters (``cut_message``), the
    traceback to its last ``TRACEBACK_LIMIT``, as the raw text to its first.

    Total: an exception whose ``str()`` raises (a ``__str__`` reading an attribute never set)
    is recorded with a placeholder. Raised here, inside the handler's ``except``, it would
    escape the engine and leave the run to be replayed for ever."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    data: dict[str, Any] = {
        "type": storable_text(type(exc).__name__),
        "message": storable_text(cut_message(shown(exc))),
        "traceback": storable_text(tb[-TRACEBACK_LIMIT:]),
    }
    try:
        raw = getattr(exc, "raw_text", None)
    except Exception:
        raw = None
    if raw is not None:
        data["raw_text"] = storable_text(shown(raw)[:TRACEBACK_LIMIT])
    data.update(extra)
    return data


def cut_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with a note saying how long it was, when it is
    over ``limit`` + ``MESSAGE_SLACK``."""
    if len(text) <= limit + MESSAGE_SLACK:
        return text
    return f"{text[:limit]}… [message cut: {len(text):,} characters in all]"


def shown(value: object) -> str:
    """``str(value)``, or a placeholder naming why it could not be had."""
    try:
        text = str(value)
    except Exception as exc:
        return f"<str() of {type(value).__name__} failed: {type(exc).__name__}>"
    return text if isinstance(text, str) else ""


def storable_text(text: str) -> str:
    """``text`` with what jsonb cannot store escaped: NUL as ``\\x00``, a lone surrogate as
    ``\\udXXX``."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def worker_lost(step: Any, exhausted: bool) -> dict[str, Any]:
    """The error recorded when the worker running a step's attempt died (SIGKILL, OOM)."""
    message = (
        f"the worker running attempt {step.attempt} of {step.max_attempts} was lost "
        "(killed or crashed)"
    )
    if exhausted:
        message += "; attempt budget exhausted"
    return {"type": "WorkerLost", "message": message, "attempt": step.attempt}


def is_interrupt(exc: BaseException) -> bool:
    """``exc`` stops the process or its thread (an exit, Ctrl-C, a killed greenlet), rather
    than being something the code it interrupted did."""
    if isinstance(exc, SystemExit | KeyboardInterrupt | GeneratorExit):
        return True
    return type(exc).__name__ == "GreenletExit"  # gevent's kill, without importing greenlet


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, NonRetryableError | PayloadTooLargeError | TypeError):
        return False
    try:
        return bool(getattr(exc, "retryable", True))
    except Exception:  # a ``retryable`` property that raises: a bug, not worth a paid retry
        return False


def retry_after(exc: BaseException) -> float | None:
    """A hint from the error itself (an HTTP 429's Retry-After), honoured over the backoff, up
    to ``SLUICE_MAX_RETRY_AFTER_SECONDS``: it comes from outside (a provider's header), and a
    Retry-After of years would park the step until then, or overflow its wake-up time."""
    try:
        value = getattr(exc, "retry_after", None)
        seconds = float(value) if value is not None else None
    except Exception:  # not a number, or a property that raises
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, float(settings.SLUICE_MAX_RETRY_AFTER_SECONDS))


def call_step(sd: StepDef, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> Any:
    """Run the step's function, enforcing its timeout where the platform lets us preempt.

    In a Celery prefork child the task runs on the main thread, so SIGALRM interrupts a stuck
    step. Elsewhere (thread pools) the timeout is checked when the call returns.
    """
    if not sd.timeout:
        return sd.fn(*args, **kwargs)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def on_alarm(signum: int, frame: Any) -> None:
            raise StepTimeout(f"step {sd.name!r} timed out after {sd.timeout:g}s")

        previous = signal.getsignal(signal.SIGALRM)  # None: one not installed from Python
        restore = previous if previous is not None else signal.SIG_DFL
        # Both inside the ``try``: a timer that cannot be set, or one so short it fires before
        # the call starts, must not leave ``on_alarm`` installed for whatever runs next.
        try:
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, sd.timeout)
            return sd.fn(*args, **kwargs)
        finally:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
            finally:  # even if the alarm fires just before it is disarmed
                signal.signal(signal.SIGALRM, restore)
    t0 = time.monotonic()
    value = sd.fn(*args, **kwargs)
    if time.monotonic() - t0 > sd.timeout:
        raise StepTimeout(f"step {sd.name!r} timed out after {sd.timeout:g}s")
    return value


@lru_cache(maxsize=1024)
def _return_annotation(fn: Callable[..., Any]) -> Any:
    try:
        name = getattr(fn, "__qualname__", repr(fn))
        return type_hints(fn, f"step {name!r}", only="return").get("return")
    except Exception:
        return None


def return_annotation(sd: StepDef) -> Any:
    try:
        return _return_annotation(sd.fn)
    except TypeError:  # unhashable callable
        return None


# Values a step cannot change in place: handed to it as they are. Exact types (``type(v) in``),
# which is the cheap test an int argument of a trivial step pays; anything else is copied.
IMMUTABLE = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        bytes,
        complex,
        Decimal,
        Fraction,
        datetime,
        date,
        clock_time,
        timedelta,
        uuid.UUID,
    }
)


def own_copies(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments an inline step is called with: its own copy of each mutable one (a dict,
    a list, a set, a model, a tuple holding one), the rest as they are.

    A step that changed its argument in place changed the handler's object on the first run
    only: a replay returns the step's journaled result without calling it, so the handler's
    object stayed as it was, and the run's result depended on whether it had been replayed
    (a wrong output, or a DeterminismError on the next step's arguments). Branches have
    always had their own copy (their arguments come from the journal's JSON)."""
    for value in args:
        if type(value) not in IMMUTABLE:
            args = tuple(_copied(v) for v in args)
            break
    for value in kwargs.values():
        if type(value) not in IMMUTABLE:
            kwargs = {key: _copied(v) for key, v in kwargs.items()}
            break
    return args, kwargs


def _copied(value: Any) -> Any:
    if type(value) in IMMUTABLE:
        return value
    try:
        return copy.deepcopy(value)
    except Exception:
        # Not copyable (an object holding a lock, say): the step gets the object itself, as
        # it always did. Its arguments were stored as JSON, so a replay still compares them.
        return value


def canonical_sets(value: Any) -> Any:
    """``value`` with every ``set`` and ``frozenset`` in it (at any depth of dicts, lists,
    tuples and sets) made a list in a canonical order: sorted by each element's canonical
    JSON. ``value`` itself when it holds none.

    JSON has no sets: stored as they iterate, a set of strings was a list in an order that
    changes with the process (``PYTHONHASHSEED``), so a step call's digest differed between
    the worker that journaled it and the one replaying it, and a correct run failed with a
    DeterminismError after a worker restart. (Numbers too: colliding hashes iterate in the
    order of insertion, which can follow a set of strings'.) A call journaled before sets
    were sorted still matches its journal (``context.legacy_digest``). A set inside a pydantic
    model or a dataclass is the model's to serialize, and not reordered: use a list (or a
    sorted one) there.

    Raises ``TypeError`` (as ``to_json`` does) for an element that is not JSON."""
    try:
        return _canonical(value)
    except RecursionError:
        return value  # a value that contains itself: ``to_json`` says so


_SETS = (set, frozenset)
_SEQUENCES = (list, tuple)


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind in IMMUTABLE:
        return value
    if kind is dict or (kind is not list and kind is not tuple and isinstance(value, dict)):
        out: dict[Any, Any] | None = None
        i = 0
        for key, item in value.items():
            changed = _canonical(item)
            if out is not None:
                out[key] = changed
            elif changed is not item:
                out = dict(list(value.items())[:i])
                out[key] = changed
            i += 1
        return value if out is None else out
    if kind is list or kind is tuple or isinstance(value, _SEQUENCES):
        for i, item in enumerate(value):
            changed = _canonical(item)
            if changed is not item:
                return [*value[:i], changed, *(_canonical(v) for v in value[i + 1 :])]
        return value
    if isinstance(value, _SETS):
        return sorted((_canonical(item) for item in value), key=_canonical_text)
    return value


def _canonical_text(value: Any) -> str:
    return encode_sorted(to_json(value, "an element of a set"), "an element of a set")
