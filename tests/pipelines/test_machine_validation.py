"""The machine DSL is validated when a machine is defined, and again by the system check."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines import checks
from pipelines.machine import (
    Machine,
    MachineDefinitionError,
    final,
    goto,
    human,
    machine,
    parallel,
    parse_duration,
    register,
    state,
    unregister,
    wait,
)
from tests.pipelines.machines import branch_a, branch_b, is_large, measure, small

pytestmark = pytest.mark.core


def errors_of(**kwargs: Any) -> list[str]:
    kwargs.setdefault("id", "test_machine.invalid")
    with pytest.raises(MachineDefinitionError) as info:
        machine(**kwargs)
    assert str(info.value).startswith("machine 'test_machine.invalid' is invalid: ")
    return info.value.errors


def test_it_rejects_a_transition_to_an_unknown_state() -> None:
    errors = errors_of(
        initial="a", states={"a": state(run=measure, on_done="nowhere"), "done": final()}
    )
    assert "state 'a': transition to unknown state 'nowhere'" in errors


def test_it_rejects_an_unknown_initial_state() -> None:
    errors = errors_of(initial="start", states={"done": final()})
    assert "initial state 'start' is not defined" in errors


def test_it_names_unreachable_states() -> None:
    errors = errors_of(
        initial="a",
        states={
            "a": state(run=measure, on_done="done"),
            "orphan": state(run=small, on_done="done"),
            "done": final(),
        },
    )
    assert errors == ["state 'orphan' is unreachable from 'a'"]


def test_it_requires_a_reachable_final_state() -> None:
    errors = errors_of(
        initial="a",
        states={
            "a": state(run=measure, on_done="b"),
            "b": state(run=small, on_done="a"),
        },
    )
    assert "no final state is reachable from 'a'" in errors


def test_it_requires_a_default_branch_after_guards() -> None:
    errors = errors_of(
        initial="a",
        states={
            "a": state(run=measure, on_done=[goto("big", guard=is_large)]),
            "big": final(),
        },
    )
    assert errors == [
        "state 'a': guarded transitions need a default branch "
        "(end the list with a goto() without guard)"
    ]


def test_it_rejects_an_unguarded_goto_before_others() -> None:
    errors = errors_of(
        initial="a",
        states={
            "a": state(run=measure, on_done=[goto("b"), goto("c", guard=is_large), goto("b")]),
            "b": final(),
            "c": final(),
        },
    )
    assert "state 'a': an unguarded goto('b') must be the last transition" in errors


def test_it_rejects_a_dead_end() -> None:
    errors = errors_of(initial="a", states={"a": state(run=measure), "done": final()})
    assert "state 'a' has no on_done transition (a dead end; end in a final() state)" in errors


def test_it_checks_parallel_states() -> None:
    errors = errors_of(
        initial="fan",
        states={
            "fan": parallel(
                {"x": state(run=branch_a, on_done="done"), "y": state(run=branch_b)},
                min_success=3,
                on_done="done",
            ),
            "done": final(),
        },
    )
    assert "state 'fan': branch 'x' cannot have transitions of its own" in errors
    assert "state 'fan': min_success=3 must be between 1 and 2" in errors


def test_it_checks_gates() -> None:
    errors = errors_of(
        initial="one",
        states={
            "one": human(instruction="?", title="Check", on={"ok": "two"}, on_timeout="approve"),
            "two": human(instruction="?", title="Check", on={"ok": "done"}, on_timeout="ok"),
            "done": final(),
        },
    )
    assert "state 'one': on_timeout='approve' is not one of its outcomes ['ok']" in errors
    assert "state 'two': title 'Check' is already used by state 'one'" in errors


def test_it_accepts_a_valid_machine_and_draws_it() -> None:
    m = machine(
        id="test_machine.drawn",
        initial="measuring",
        states={
            "measuring": state(
                run=measure, on_done=[goto("fan", guard=is_large), goto("ask")], on_error="failed"
            ),
            "fan": parallel({"a": state(run=branch_a), "b": state(run=branch_b)}, on_done="listen"),
            "listen": wait(event="ping", timeout="1h", on_done="ask", on_timeout="ask"),
            "ask": human(instruction="Fine?", on={"approve": "done", "reject": "measuring"}),
            "done": final(),
            "failed": final(status="failed"),
        },
    )
    text = m.to_mermaid()
    assert text.startswith("stateDiagram-v2\n")
    assert "    [*] --> measuring\n" in text
    assert "    measuring --> fan : is large\n" in text
    assert "    measuring --> ask : otherwise\n" in text
    assert "    measuring --> failed : error\n" in text
    assert "    state fan {\n" in text and "        --\n" in text
    assert "    listen --> ask : timeout\n" in text
    assert "    ask --> done : approve / timeout\n" in text
    assert "    ask --> measuring : reject\n" in text
    assert "    done --> [*]\n" in text and "    failed --> [*]\n" in text
    assert "    class ask gate\n" in text
    unregister("test_machine.drawn")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("24h", 86400),
        ("2d", 172800),
        ("1.5h", 5400),
        (12, 12),
    ],
)
def test_it_reads_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_it_refuses_an_unreadable_duration() -> None:
    with pytest.raises(ValueError, match="cannot read duration 'soon'"):
        parse_duration("soon")


# --- the system check -------------------------------------------------------------------------


def test_the_system_check_reports_an_invalid_machine_naming_the_state() -> None:
    broken = Machine(
        id="test_machine.broken",
        version=1,
        initial="a",
        states={
            "a": state(run=measure, on_done="gone"),
            "done": final(),
        },
    )
    register(broken)  # deliberately unvalidated, as if edited after definition
    try:
        messages = checks.check_machines()
    finally:
        unregister("test_machine.broken")
    ours = [m for m in messages if m.obj == "test_machine.broken"]
    assert {m.id for m in ours} == {"pipelines.E001"}
    assert ours[0].msg == (
        "machine 'test_machine.broken' version 1: state 'a': transition to unknown state 'gone'"
    )


def test_the_system_check_reports_a_step_other_processes_cannot_import() -> None:
    def local(data: dict[str, Any]) -> dict[str, Any]:
        return {}

    m = machine(
        id="test_machine.local_step",
        initial="fan",
        states={
            "fan": parallel({"x": state(run=local), "y": state(run=branch_a)}, on_done="done"),
            "done": final(),
        },
    )
    try:
        messages = [c for c in checks.check_machines() if c.obj == m.id]
    finally:
        unregister(m.id)
    assert [c.id for c in messages] == ["pipelines.E002"]
    assert "state 'fan': step 'local' cannot be imported by its path" in messages[0].msg


def test_the_built_in_pipelines_pass_the_system_check() -> None:
    builtin = {"thread_analysis"}
    assert not [m for m in checks.check_machines() if m.obj in builtin]


def test_the_system_check_reports_model_settings(settings: Any) -> None:
    settings.SLUICE_LLM_MODEL = "openai:gpt-unpriced"
    settings.SLUICE_LLM_API_KEY = ""
    settings.SLUICE_LLM_MODELS = {
        "thread_analysis": "sorcery:wand",
        "support_ticket": "openai-compatible:qwen",
    }
    settings.SLUICE_LLM_BASE_URL = ""
    import os

    env_key = os.environ.pop("OPENAI_API_KEY", None)
    try:
        messages = checks.check_models()
    finally:
        if env_key is not None:
            os.environ["OPENAI_API_KEY"] = env_key
    by_id = {(m.id, m.msg.split(":")[0]) for m in messages}
    assert ("pipelines.W001", "SLUICE_LLM_MODEL") in by_id
    assert ("pipelines.W002", "SLUICE_LLM_MODEL") in by_id
    assert ("pipelines.E003", "SLUICE_LLM_MODELS['thread_analysis']") in by_id
    assert ("pipelines.E003", "SLUICE_LLM_MODELS['support_ticket']") in by_id
    assert any("unknown LLM provider 'sorcery'" in m.msg for m in messages)
    assert any("needs a base URL" in m.msg for m in messages)


def test_the_default_configuration_passes_the_system_check(settings: Any) -> None:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    assert checks.check_models() == []


# --- found by the eleventh session's review: each surfaced only at run time, or as a TypeError


@pytest.mark.parametrize(
    ("states", "message"),
    [
        (
            {
                "a": state(run=small, on_done=[goto("b", guard=lambda d: True), goto("done")]),
                "b": state(run=branch_a, on_done="c"),
                "c": state(run=branch_b, on_done="b"),
                "done": final(),
            },
            "state 'b' cannot reach a final state",
        ),
        (
            {"a": state(run=small, on_done=final()), "done": final()},  # type: ignore[arg-type]
            "on_done must name a state",
        ),
        (
            {
                "a": state(run=small, on_done=[goto("done", guard="yes"), goto("done")]),  # type: ignore[arg-type]
                "done": final(),
            },
            "the guard of goto('done') must be a function",
        ),
        (
            {
                "a": parallel({"x": state(run=branch_a)}, min_success="1", on_done="done"),  # type: ignore[arg-type]
                "done": final(),
            },
            "min_success='1' must be an integer",
        ),
        (
            {"a": human(instruction="x", on={"approve": "done"}, approvals=0), "done": final()},
            "approvals=0 must be 1 or more",
        ),
        (
            {"a": human(instruction="x", on={"approve": "done"}, timeout=-5), "done": final()},
            "timeout must be longer than 0",
        ),
    ],
    ids=[
        "loop-without-exit",
        "state-object-target",
        "guard-not-callable",
        "min-success-text",
        "no-approvals",
        "negative-timeout",
    ],
)
def test_it_rejects_definitions_that_failed_only_at_run_time(
    states: dict[str, Any], message: str
) -> None:
    errors = errors_of(initial="a", states=states)
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize("value", ["99999999999d", float("nan"), float("inf"), True, None])
def test_a_duration_it_cannot_read_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="cannot read duration"):
        parse_duration(value)


# --- what a gate or an event wait would refuse on every run (review finding: each was accepted
# when the machine was defined, and failed every run that reached the state)


@pytest.mark.parametrize(
    ("states", "message"),
    [
        (
            {
                "h": human(instruction="x", on={"approve": "done", "x" * 65: "done"}),
                "done": final(),
            },
            "state 'h': outcome 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' must be a name of 1 "
            "to 64 characters",
        ),
        (
            {"h": human(instruction="x", on={"approve": "done", "": "done"}), "done": final()},
            "state 'h': outcome '' must be a name of 1 to 64 characters",
        ),
        (
            {"w": wait(event="", on_done="done"), "done": final()},
            "state 'w': event= must be an event name of 1 to 200 characters, not ''",
        ),
        (
            {"w": wait(event="e" * 201, on_done="done"), "done": final()},
            "state 'w': event= must be an event name of 1 to 200 characters",
        ),
        (
            {"w": wait(event="a\x00b", on_done="done"), "done": final()},
            "state 'w': the event name contains a NUL character",
        ),
        (
            {"w": wait(event="e", timeout="3661d", on_done="done"), "done": final()},
            "state 'w': timeout=3661 days, 0:00:00 is over ten years",
        ),
        (
            {"w": wait(event="e", timeout=-1, on_done="done"), "done": final()},
            "state 'w': timeout must not be negative",
        ),
        (
            {"h": human(instruction="x", on={"approve": "done"}, group="g" * 151), "done": final()},
            "state 'h': group= must name a group (1 to 150 characters, no NUL)",
        ),
        (
            {"h": human(instruction="x", on={"approve": "done"}, group=""), "done": final()},
            "state 'h': group= must name a group",
        ),
        (
            {"h": human(instruction="x", on={"approve": "done"}, timeout="4000d"), "done": final()},
            "state 'h': timeout=4000 days, 0:00:00 is over ten years, the longest a run can wait",
        ),
        (
            {"h": human(instruction="a\x00b", on={"approve": "done"}), "done": final()},
            "state 'h': the instruction contains a NUL character (\\x00), which cannot be stored",
        ),
        (
            {"h": human(instruction="x", title="a\x00b", on={"approve": "done"}), "done": final()},
            "state 'h': the title contains a NUL character",
        ),
        (
            {"h" * 201: human(instruction="x", on={"approve": "done"}), "done": final()},
            "the gate's title (title=, else the state's name) must be 1 to 200 characters, not 201",
        ),
        (
            {"h": human(instruction="x", on={"approve": "done"}, approvals=11), "done": final()},
            "state 'h': approvals=11 must be at most 10",
        ),
        (
            {
                "h": human(
                    instruction="x",
                    on={"approve": "done"},
                    escalate_after="5000d",
                    escalate_to="leads",
                ),
                "done": final(),
            },
            "state 'h': escalate_after=5000 days, 0:00:00 is over ten years",
        ),
        (
            {
                "h": human(
                    instruction="x",
                    on={"approve": "done"},
                    escalate_after="1h",
                    escalate_to="reviewers",
                ),
                "done": final(),
            },
            "state 'h': escalate_to='reviewers' is the gate's own group",
        ),
        (
            {"s" * 200: state(run=small, on_done="done"), "done": final()},
            "over the 200 a journal entry's name holds",
        ),
        (
            {"p": parallel({"b" * 195: state(run=branch_a)}, on_done="done"), "done": final()},
            "state 'p': the journal name 'state:p/bbb",
        ),
    ],
    ids=[
        "long-outcome",
        "empty-outcome",
        "empty-event",
        "long-event",
        "nul-event",
        "wait-over-ten-years",
        "negative-wait",
        "long-group",
        "empty-group",
        "gate-over-ten-years",
        "nul-instruction",
        "nul-title",
        "long-title",
        "too-many-approvals",
        "escalation-over-ten-years",
        "escalation-to-own-group",
        "long-state-name",
        "long-branch-name",
    ],
)
def test_it_rejects_gate_and_wait_settings_every_run_would_refuse(
    states: dict[str, Any], message: str
) -> None:
    errors = errors_of(initial=next(iter(states)), states=states)
    assert any(message in e for e in errors), errors


def test_its_limits_are_the_gates_and_the_engines() -> None:
    """The DSL's limits copy the reviews app's (pipelines does not import it): they must agree."""
    from pipelines import machine as m
    from reviews.decision import MAX_APPROVALS
    from reviews.models import Gate
    from workflows.models import Step

    def width(model: Any, name: str) -> int:
        return int(model._meta.get_field(name).max_length)

    assert m.MAX_OUTCOME == width(Gate, "outcome") == width(Gate, "on_timeout")
    assert m.MAX_GROUP == width(Gate, "group") == width(Gate, "escalate_to")
    assert m.MAX_TITLE == width(Gate, "title")
    assert m.MAX_EVENT == m.MAX_STEP_NAME == width(Step, "name")
    assert m.MAX_APPROVALS == MAX_APPROVALS


@pytest.mark.django_db(transaction=True)
def test_a_machine_at_every_limit_runs(bell: Any) -> None:
    from reviews.models import Gate
    from reviews.services import decide_gate
    from workflows import get_run, send_event, start

    outcome, group, event = "o" * 64, "g" * 150, "e" * 200
    machine(
        id="test_machine.limits",
        initial="h",
        states={
            "h": human(
                instruction="x",
                title="t" * 200,
                on={outcome: "w"},
                on_timeout=outcome,
                group=group,
                timeout="3660d",  # the engine's ten years (of 366 days)
            ),
            "w": wait(event=event, timeout="3660d", on_done="done", on_timeout="done"),
            "done": final(),
        },
    )
    try:
        run = start("test_machine.limits", {})
        bell.settle()
        gate = Gate.objects.get(run=run, status="open")
        assert (gate.group, len(gate.title)) == (group, 200)
        decide_gate(gate.pk, outcome=outcome, actor="tester")
        bell.settle()
        send_event(run.pk, event, {"ok": True})
        bell.settle()
        assert get_run(run.pk).status == "succeeded"
    finally:
        unregister("test_machine.limits")
