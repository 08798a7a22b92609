"""Machines run as ordinary workflows: guards, partial failure, errors, gates, events, versions,
and graphs of runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from pipelines.machine import final, machine, state, unregister, wait
from pipelines.registry import mermaid_for_run
from reviews.models import Gate
from reviews.services import decide_gate, expire_due_gates
from tests.pipelines import machines
from tests.support import Bell
from workflows import get_run, send_event, start
from workflows.models import Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


def run_to_rest(bell: Bell, run: Run) -> Run:
    bell.settle()
    return get_run(run.pk)


def journal(run: Run) -> list[tuple[str, str, str]]:
    return [
        (s.kind, s.name, s.status)
        for s in Step.objects.filter(run=run, superseded=False).order_by("position", "branch")
    ]


def test_it_follows_the_guard_that_holds(bell: Bell) -> None:
    big = run_to_rest(bell, start("test_machine.guards", {"text": "a long enough text"}))
    tiny = run_to_rest(bell, start("test_machine.guards", {"text": "short"}))
    assert big.status == tiny.status == "succeeded"
    assert big.output["trail"] == ["measuring", "large", "done"]
    assert tiny.output["trail"] == ["measuring", "small", "done"]
    assert tiny.output["context"] == {"size": 5, "text": "short", "verdict": "small"}
    assert journal(big) == [
        ("step", "state:measuring", "succeeded"),
        ("step", "state:large", "succeeded"),
        ("step", "state:done", "succeeded"),
    ]


def test_it_proceeds_when_enough_branches_succeed_and_records_the_failure(bell: Bell) -> None:
    run = run_to_rest(bell, start("test_machine.partial", {}))
    assert run.status == "succeeded"
    context = run.output["context"]
    assert (context["a"], context["b"]) == ("done", "done")
    assert context["branch_failures"] == {
        "fan": {"c": {"type": "NonRetryableError", "message": "branch c could not be analysed"}}
    }
    branches = {s.name: s.status for s in Step.objects.filter(run=run, kind="branch")}
    assert branches == {
        "state:fan/a": "succeeded",
        "state:fan/b": "succeeded",
        "state:fan/c": "failed",
    }


def test_it_takes_the_error_path_when_too_few_branches_succeed(bell: Bell) -> None:
    run = run_to_rest(bell, start("test_machine.too_few", {}))
    assert run.status == "failed"
    assert run.error["type"] == "MachineFailed"
    assert run.error["message"] == (
        "test_machine.too_few ended in final state 'broken': fan failed with TooFewBranches: "
        "state 'fan': 1 of 2 branches succeeded, 2 needed; failed: c (NonRetryableError: "
        "branch c could not be analysed)"
    )


def test_a_failed_step_takes_its_on_error_transition(bell: Bell) -> None:
    run = run_to_rest(bell, start("test_machine.on_error", {}))
    assert run.status == "failed"
    assert (
        "ended in final state 'failed': parsing failed with NonRetryableError: cannot parse"
        in run.error["message"]
    )
    assert journal(run)[-1] == ("step", "state:failed", "succeeded")


def test_a_rejection_loops_back_with_the_comment_in_the_context(bell: Bell) -> None:
    run = run_to_rest(bell, start("test_machine.review", {}))
    assert run.status == "suspended"
    gate = Gate.objects.get(run=run, status="open")
    assert gate.title == "Check the work"
    assert gate.payload["rounds"] == 1
    decide_gate(gate.pk, outcome="reject", comment="Count again, carefully.", actor="tester")
    run = run_to_rest(bell, run)
    second = Gate.objects.get(run=run, status="open")
    assert (second.attempt, second.payload["seen_comment"]) == (2, "Count again, carefully.")
    decide_gate(second.pk, outcome="approve", actor="tester")
    run = run_to_rest(bell, run)
    assert run.status == "succeeded"
    assert run.output["trail"] == ["work", "check", "work", "check", "done"]
    assert run.output["context"]["rounds"] == 2
    assert run.output["context"]["review"]["outcome"] == "approve"


def test_an_expired_gate_takes_its_default_outcome(bell: Bell) -> None:
    run = run_to_rest(bell, start("test_machine.review", {}))
    Gate.objects.filter(run=run).update(deadline=timezone.now() - timedelta(seconds=1))
    expire_due_gates()
    run = run_to_rest(bell, run)
    assert run.status == "succeeded"
    assert run.output["context"]["review"]["timed_out"] is True


def test_a_wait_state_merges_the_event_or_times_out(bell: Bell) -> None:
    answered = run_to_rest(bell, start("test_machine.wait", {}))
    assert answered.status == "suspended"
    send_event(answered.pk, "answer", {"reply": "yes"})
    answered = run_to_rest(bell, answered)
    assert answered.output["trail"] == ["asking", "answered", "done"]
    assert answered.output["context"]["reply"] == "yes"

    silent = run_to_rest(bell, start("test_machine.wait", {}))
    Step.objects.filter(run=silent, kind="event").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )
    silent = run_to_rest(bell, silent)
    assert silent.output["trail"] == ["asking", "silent"]
    assert silent.output["context"]["timed_out"] == ["answer"]


def test_a_run_keeps_walking_the_version_it_started_on(bell: Bell) -> None:
    def define(version: int, after: str) -> None:
        step = machines.small if version == 1 else machines.large
        machine(
            id="test_machine.versioned",
            version=version,
            initial="asking",
            states={
                "asking": wait(event="go", on_done=after),
                after: state(run=step, on_done="done"),
                "done": final(),
            },
        )

    try:
        define(1, "v1_step")
        old = run_to_rest(bell, start("test_machine.versioned", {}))
        define(2, "v2_step")  # deployed while the old run waits
        new = run_to_rest(bell, start("test_machine.versioned", {}))
        assert (old.version, new.version) == (1, 2)
        for run in (old, new):
            send_event(run.pk, "go", {})
        old, new = run_to_rest(bell, old), run_to_rest(bell, new)
        assert old.output["trail"] == ["asking", "v1_step", "done"]
        assert new.output["trail"] == ["asking", "v2_step", "done"]
    finally:
        unregister("test_machine.versioned")


def test_a_run_of_a_removed_version_fails_with_a_clear_message(bell: Bell) -> None:
    try:
        machine(
            id="test_machine.gone",
            version=1,
            initial="asking",
            states={"asking": wait(event="go", on_done="done"), "done": final()},
        )
        run = run_to_rest(bell, start("test_machine.gone", {}))
        unregister("test_machine.gone")
        machine(
            id="test_machine.gone",
            version=2,
            initial="asking",
            states={"asking": wait(event="go", on_done="done"), "done": final()},
        )
        send_event(run.pk, "go", {})
        run = run_to_rest(bell, run)
        assert run.status == "failed"
        assert run.error["message"] == (
            "machine 'test_machine.gone' version 1 is no longer defined (defined: 2); keep an "
            "old version's definition until its runs have finished"
        )
    finally:
        unregister("test_machine.gone")


def marks(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "class":
            found[parts[2]] = set(parts[1].split(","))
    return found


def test_the_graph_of_a_run_marks_visited_current_and_failed_states(bell: Bell) -> None:
    run = run_to_rest(bell, start("test_machine.review", {}))
    waiting = marks(mermaid_for_run(run))
    assert waiting["visited"] == {"work"}
    assert waiting["current"] == {"check"}

    partial = run_to_rest(bell, start("test_machine.partial", {}))
    text = mermaid_for_run(partial)
    done = marks(text)
    assert done["visited"] == {"fan__a", "fan__b"}
    assert done["failed"] == {"fan__c"}
    assert done["current"] == {"done"}  # where the run ended

    failed = run_to_rest(bell, start("test_machine.on_error", {}))
    assert marks(mermaid_for_run(failed))["failed"] == {"parsing", "failed"}


def test_a_run_graph_counts_branches_of_the_latest_visit_only(bell: Bell) -> None:
    run = run_to_rest(bell, start("thread_analysis", {"thread": "Ann: hi\nBo: hello"}))
    gate = Gate.objects.get(run=run, status="open")
    decide_gate(gate.pk, outcome="reject", comment="again", actor="tester")
    run = run_to_rest(bell, run)
    text = mermaid_for_run(run)
    assert 'state "darvo · 1/1"' not in text  # one branch per visit: no n/m label
    assert marks(text)["current"] == {"standard_review"}
    assert {"parsing", "analysis__darvo"} <= marks(text)["visited"]


def test_it_accepts_any_json_object_without_an_input_model(bell: Bell, settings: Any) -> None:
    run = run_to_rest(bell, start("test_machine.partial", {"anything": [1, 2]}))
    assert run.output["context"]["anything"] == [1, 2]
