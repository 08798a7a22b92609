"""A step's ``timeout`` and a plug-in wait's ``timeout`` are checked where they are written.

Found by review: ``@step(timeout=...)`` took anything. A ``timedelta`` failed every run with a
TypeError (on a thread pool after the step's side effects were done, its result thrown away),
``10**12`` overflowed the timer, ``-1`` made ``setitimer`` fail on every attempt, and NaN,
infinity or ``"30"`` were accepted. ``ctx.wait_for(..., timeout=3600)`` failed its run with the
engine's own arithmetic. And the SIGALRM handler a step installs was left behind when the timer
could not be set or fired before the call started.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.support import Bell
from workflows import get_run, start, step, workflow
from workflows.core import clock
from workflows.core.calls import MAX_WAIT_SECONDS, call_step
from workflows.core.definitions import StepDef
from workflows.core.errors import StepTimeout
from workflows.models import Step

engine = pytest.mark.django_db(transaction=True)
pytestmark = [pytest.mark.core]

SIDE_EFFECTS: list[int] = []


def _short(value: Any) -> str:
    try:
        return repr(value)[:30]
    except ValueError:  # an int past the 4,300-digit limit
        return "a huge int"


# --- @step(timeout=...) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("30", TypeError, "takes a timedelta or a number of seconds, not str"),
        (True, TypeError, "takes a timedelta or a number of seconds, not bool"),
        ([30], TypeError, "takes a timedelta or a number of seconds, not list"),
        (math.nan, ValueError, "must be a finite duration"),
        (math.inf, ValueError, "must be a finite duration"),
        (10**12, ValueError, "must be a finite duration of at most ten years"),
        (10**400, ValueError, "must be a finite duration of at most ten years"),
        (10**5000, ValueError, "must be a finite duration of at most ten years"),
        (timedelta.max, ValueError, "must be a finite duration of at most ten years"),
        (-1, ValueError, "must be positive"),
        (timedelta(seconds=-30), ValueError, "must be positive"),
    ],
    ids=lambda value: value if isinstance(value, str) else _short(value),
)
def test_a_bad_step_timeout_fails_where_it_is_written(
    bad: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="@step\\(timeout=...\\)") as info:
        step(timeout=bad)
    assert message in str(info.value)
    with pytest.raises(error, match="the timeout of step 'f' ") as info:
        StepDef(fn=lambda: None, name="f", timeout=bad)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("good", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (timedelta(0), 0.0),
        (2.5, 2.5),
        (30, 30.0),
        (timedelta(seconds=30), 30.0),
        (timedelta(minutes=5), 300.0),
        (MAX_WAIT_SECONDS, MAX_WAIT_SECONDS),
    ],
    ids=lambda value: value if isinstance(value, str) else _short(value),
)
def test_a_good_step_timeout_is_kept_as_seconds(good: Any, seconds: float | None) -> None:
    sd = step(timeout=good)(lambda: None)
    assert sd.timeout == seconds
    assert sd.timeout is None or type(sd.timeout) is float


def test_a_timeout_of_zero_is_no_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timer(*args: Any) -> Any:
        raise AssertionError("a step with timeout=0 set a timer")

    monkeypatch.setattr(signal, "setitimer", no_timer)
    assert call_step(step(timeout=0)(lambda x: x + 1), [1], {}) == 2


@step(timeout=timedelta(seconds=30))
def charged(x: int) -> int:
    SIDE_EFFECTS.append(x)
    return x * 10


def test_a_timedelta_timeout_works_on_a_thread() -> None:
    """On a thread pool the timeout is checked when the call returns: the step ran, then its
    result was lost to ``float > timedelta``."""
    out: list[Any] = []

    def go() -> None:
        try:
            out.append(call_step(charged, [7], {}))
        except Exception as exc:
            out.append(exc)

    SIDE_EFFECTS.clear()
    thread = threading.Thread(target=go)
    thread.start()
    thread.join()
    assert out == [70] and SIDE_EFFECTS == [7]


@workflow(name="test_timeout_checks.charge")
def charge_wf(ctx: Any) -> int:
    return ctx.run(charged, 4)


@engine
def test_a_step_with_a_timedelta_timeout_runs(bell: Bell) -> None:
    """It failed every run at once with ``TypeError: 'datetime.timedelta' object cannot be
    interpreted as an integer``."""
    run = start(charge_wf, {})
    bell.settle()
    run = get_run(run.pk)
    assert (run.status, run.output) == ("succeeded", 40)


# --- the SIGALRM handler is put back ----------------------------------------------------------


def test_the_alarm_handler_is_restored_when_the_timer_cannot_be_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = signal.setitimer
    before = signal.getsignal(signal.SIGALRM)

    def refuse(which: int, seconds: float, interval: float = 0.0) -> Any:
        if seconds:
            raise OSError(22, "Invalid argument")
        return real(which, seconds, interval)

    monkeypatch.setattr(signal, "setitimer", refuse)
    with pytest.raises(OSError):
        call_step(step(timeout=5)(lambda: "ran"), [], {})
    assert signal.getsignal(signal.SIGALRM) is before


def test_the_alarm_handler_is_restored_after_a_timer_that_fires_at_once() -> None:
    before = signal.getsignal(signal.SIGALRM)
    tiny = step(timeout=1e-9)(lambda: "ran")
    for _ in range(20):
        try:
            call_step(tiny, [], {})
        except StepTimeout:
            pass
        assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_step_still_times_out() -> None:
    before = signal.getsignal(signal.SIGALRM)
    slow = step(timeout=timedelta(milliseconds=50))(lambda: time.sleep(5))
    with pytest.raises(StepTimeout, match="timed out after 0.05s"):
        call_step(slow, [], {})
    assert signal.getsignal(signal.SIGALRM) is before


# --- ctx.wait_for(..., timeout=...) -----------------------------------------------------------


def _opened(row: Any) -> None:
    pass


TIMEOUTS: dict[str, Any] = {
    "seconds": 3600,
    "a timedelta": timedelta(hours=1),
    "endless": timedelta.max,
    "text": "1h",
    "NaN": math.nan,
}


@workflow(name="test_timeout_checks.plugin_wait")
def plugin_wait(ctx: Any, case: str) -> Any:
    return ctx.wait_for(
        kind="thing", name="x", on_open=_opened, timeout=TIMEOUTS[case], default="d"
    )


@engine
@pytest.mark.parametrize("case", ["seconds", "a timedelta"])
def test_a_plugin_wait_takes_seconds_or_a_timedelta(bell: Bell, case: str) -> None:
    """``timeout=3600`` failed the run with ``unsupported operand type(s) for +``."""
    run = start(plugin_wait, {"case": case})
    bell.settle()
    assert get_run(run.pk).status == "suspended"
    row = Step.objects.get(run=run, kind="thing")
    assert row.status == "waiting"
    left = row.wake_at - clock.now()  # the wake-up was written on the engine's clock
    assert timedelta(minutes=59) < left <= timedelta(hours=1)


@engine
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("endless", "wait_for(timeout=...) must be a finite duration of at most ten years"),
        ("text", "wait_for(timeout=...) takes a timedelta or a number of seconds, not str"),
        ("NaN", "wait_for(timeout=...) must be a finite duration"),
    ],
)
def test_a_bad_plugin_wait_timeout_fails_the_run_naming_it(
    bell: Bell, case: str, message: str
) -> None:
    """``timedelta.max`` failed the run with ``date value out of range``."""
    run = start(plugin_wait, {"case": case})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert message in run.error["message"], run.error["message"]
    assert not Step.objects.filter(run=run, kind="thing").exists()
