"""Loops of machines: which the runaway-loop limit stops, and which it leaves alone.

A state entered 25 times failed the run as a "runaway loop", whatever the loop did: a machine
that waits an hour for ``paid`` and sends a reminder on each timeout failed after ~25 hours,
and a review rejected 26 times failed too. Now only re-entries without a wait or a gate in
between count against ``max_visits``; ``max_total_visits`` caps all of them (configurable).

Also: a ``wait`` with a timeout and no ``on_timeout`` took ``on_done`` on a timeout (the path
of an event that came); it is now a definition error. And a step of a machine whose pool
``SLUICE_POOLS`` does not define (a typo) is a system check warning, ``pipelines.W004``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipelines import checks
from pipelines.machine import (
    MAX_TOTAL_VISITS,
    MAX_VISITS,
    MachineDefinitionError,
    final,
    goto,
    human,
    machine,
    parallel,
    state,
    unregister,
    wait,
)
from reviews.models import Gate
from reviews.services import decide_gate
from tests.support import Bell, past
from workflows import get_run, send_event, start, step
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def remind(data: dict[str, Any]) -> dict[str, Any]:
    return {"reminders": data.get("reminders", 0) + 1}


def spin(data: dict[str, Any]) -> dict[str, Any]:
    return {"spins": data.get("spins", 0) + 1}


def redo(data: dict[str, Any]) -> dict[str, Any]:
    return {"rounds": data.get("rounds", 0) + 1}


def enough_reminders(data: dict[str, Any]) -> bool:
    return bool(data["reminders"] >= data.get("give_up_after", 40))


def spun_enough(data: dict[str, Any]) -> bool:
    return bool(data["spins"] >= 1000)


DEFINED: list[str] = []


def define(machine_id: str, **kwargs: Any) -> None:
    machine(id=machine_id, **kwargs)
    DEFINED.append(machine_id)


@pytest.fixture(autouse=True)
def _forget() -> Iterator[None]:
    yield
    while DEFINED:
        unregister(DEFINED.pop())


def polling(machine_id: str, **limits: Any) -> None:
    """Wait an hour for ``paid``; on each timeout send a reminder and wait again."""
    define(
        machine_id,
        initial="waiting",
        states={
            "waiting": wait(event="paid", timeout="1h", on_done="done", on_timeout="reminding"),
            "reminding": state(
                run=remind, on_done=[goto("gave_up", guard=enough_reminders), goto("waiting")]
            ),
            "gave_up": final(status="failed"),
            "done": final(),
        },
        **limits,
    )


def time_out_the_wait(run: Run) -> None:
    Step.objects.filter(run=run, kind="event", status="waiting").update(wake_at=past(5))


def test_a_reminder_loop_that_waits_each_time_is_not_a_runaway(bell: Bell) -> None:
    polling("test_loops.poll")
    run = start("test_loops.poll", {})
    for _ in range(MAX_VISITS + 10):
        bell.settle()
        time_out_the_wait(run)
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "suspended", run.error  # waiting, after 35 reminders
    reminders = Step.objects.filter(run=run, name="state:reminding", superseded=False)
    assert reminders.count() == MAX_VISITS + 10
    send_event(run.pk, "paid", {"paid": True})
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output["context"]["reminders"] == MAX_VISITS + 10
    assert run.output["trail"][-2:] == ["waiting", "done"]


def test_the_total_limit_stops_a_waiting_loop_with_a_message_naming_it(bell: Bell) -> None:
    polling("test_loops.poll_capped", max_total_visits=5)
    run = start("test_loops.poll_capped", {})
    for _ in range(8):
        bell.settle()
        time_out_the_wait(run)
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert "'waiting' entered more than 5 times in this run" in run.error["message"]
    assert "max_total_visits" in run.error["message"]


def test_a_review_rejected_more_than_max_visits_times_goes_on(bell: Bell) -> None:
    define(
        "test_loops.review",
        initial="work",
        states={
            "work": state(run=redo, on_done="check"),
            "check": human(
                instruction="Good?",
                title="Loop check",
                on={"approve": "done", "reject": "work"},
                on_timeout="approve",
            ),
            "done": final(),
        },
    )
    run = start("test_loops.review", {})
    for _ in range(MAX_VISITS + 5):
        bell.settle()
        gate = Gate.objects.get(run_id=run.pk, status="open")
        decide_gate(gate.pk, outcome="reject", comment="again", actor="tester")
    bell.settle()
    gate = Gate.objects.get(run_id=run.pk, status="open")
    decide_gate(gate.pk, outcome="approve", actor="tester")
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output["context"]["rounds"] == MAX_VISITS + 6


@pytest.mark.parametrize("limit", [None, 7])
def test_a_loop_that_waits_for_nothing_is_still_stopped(bell: Bell, limit: int | None) -> None:
    extra = {"max_visits": limit} if limit else {}
    define(
        f"test_loops.spin{limit or ''}",
        initial="a",
        states={
            "a": state(run=spin, on_done="b"),
            "b": state(run=spin, on_done=[goto("done", guard=spun_enough), goto("a")]),
            "done": final(),
        },
        **extra,
    )
    run = start(f"test_loops.spin{limit or ''}", {})
    bell.settle()
    run = get_run(run.pk)
    cap = limit or MAX_VISITS
    assert run.status == "failed"
    assert (
        f"state 'a' entered more than {cap} times without a wait or a gate"
        in (run.error["message"])
    )


def test_the_limits_are_checked_when_the_machine_is_defined() -> None:
    states = {"go": state(run=spin, on_done="done"), "done": final()}
    for bad in (0, -1, True, 2.5, "10", None):
        with pytest.raises(MachineDefinitionError, match="max_visits"):
            machine(id="test_loops.bad", initial="go", states=states, max_visits=bad)
    for bad in (0, False, "x"):
        with pytest.raises(MachineDefinitionError, match="max_total_visits"):
            machine(id="test_loops.bad", initial="go", states=states, max_total_visits=bad)
    define("test_loops.unlimited", initial="go", states=states, max_total_visits=None)
    define("test_loops.defaults", initial="go", states=states)
    assert MAX_TOTAL_VISITS > MAX_VISITS


def test_a_wait_with_a_timeout_needs_on_timeout() -> None:
    with pytest.raises(MachineDefinitionError) as caught:
        machine(
            id="test_loops.no_on_timeout",
            initial="waiting",
            states={
                "waiting": wait(event="paid", timeout="1h", on_done="shipping"),
                "shipping": final(),
            },
        )
    assert caught.value.errors == [
        "state 'waiting': a wait with a timeout needs on_timeout=<state>, where a run goes when "
        "no event came in time (name on_done's target to take that path on a timeout too)"
    ]
    # Without a timeout it waits for the event for ever: on_done alone is enough.
    define(
        "test_loops.no_timeout",
        initial="waiting",
        states={"waiting": wait(event="paid", on_done="shipping"), "shipping": final()},
    )


# --- a misspelled pool --------------------------------------------------------------------------


@step(pool="llm-opnai")
def typo_pool(data: dict[str, Any]) -> dict[str, Any]:
    return {}


@step(pool="llm")
def known_pool(data: dict[str, Any]) -> dict[str, Any]:
    return {}


def test_the_system_check_warns_of_a_pool_settings_do_not_define() -> None:
    define(
        "test_loops.pools",
        initial="fan",
        states={
            "fan": parallel({"a": state(run=typo_pool), "b": state(run=known_pool)}, on_done="one"),
            "one": state(run=spin, on_done="done"),
            "done": final(),
        },
    )
    messages = [c for c in checks.check_machines() if c.obj == "test_loops.pools"]
    assert [c.id for c in messages] == ["pipelines.W004"]
    assert messages[0].msg == (
        "machine 'test_loops.pools' version 1, state 'fan': step 'typo_pool' runs in pool "
        "'llm-opnai', which SLUICE_POOLS does not define, so it is unlimited and served by the "
        "default queue; did you mean 'llm-openai'?"
    )
