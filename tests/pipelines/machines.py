"""Steps and machines the pipeline tests run (module level: branches import them by path)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipelines.llm import LLMTask, complete
from pipelines.machine import final, goto, human, machine, parallel, state, wait
from workflows import NonRetryableError, RetryPolicy, step, workflow

NO_RETRY = RetryPolicy(max_attempts=1)


@step
def measure(data: dict[str, Any]) -> dict[str, Any]:
    return {"size": len(data.get("text", ""))}


@step
def small(data: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": "small"}


@step
def large(data: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": "large"}


@step
def branch_a(data: dict[str, Any]) -> dict[str, Any]:
    return {"a": "done"}


@step
def branch_b(data: dict[str, Any]) -> dict[str, Any]:
    return {"b": "done"}


@step(retry=NO_RETRY)
def branch_fails(data: dict[str, Any]) -> dict[str, Any]:
    raise NonRetryableError("branch c could not be analysed")


@step(retry=NO_RETRY)
def explode(data: dict[str, Any]) -> dict[str, Any]:
    raise NonRetryableError("cannot parse the input")


@step
def count_round(data: dict[str, Any]) -> dict[str, Any]:
    return {"rounds": data.get("rounds", 0) + 1, "seen_comment": data.get("reviewer_comment", "")}


def is_large(data: dict[str, Any]) -> bool:
    return bool(data["size"] > 10)


def machine_defs() -> None:
    """Define the test machines (idempotent: redefining replaces them)."""
    machine(
        id="test_machine.guards",
        initial="measuring",
        context={"size": 0},
        states={
            "measuring": state(run=measure, on_done=[goto("large", guard=is_large), goto("small")]),
            "small": state(run=small, on_done="done"),
            "large": state(run=large, on_done="done"),
            "done": final(),
        },
    )
    machine(
        id="test_machine.partial",
        initial="fan",
        states={
            "fan": parallel(
                {"a": state(run=branch_a), "b": state(run=branch_b), "c": state(run=branch_fails)},
                min_success=2,
                on_done="done",
            ),
            "done": final(),
        },
    )
    machine(
        id="test_machine.too_few",
        initial="fan",
        states={
            "fan": parallel(
                {"a": state(run=branch_a), "c": state(run=branch_fails)},
                min_success=2,
                on_done="done",
                on_error="broken",
            ),
            "done": final(),
            "broken": final(status="failed"),
        },
    )
    machine(
        id="test_machine.on_error",
        initial="parsing",
        states={
            "parsing": state(run=explode, on_done="done", on_error="failed"),
            "done": final(),
            "failed": final(status="failed"),
        },
    )
    machine(
        id="test_machine.review",
        initial="work",
        states={
            "work": state(run=count_round, on_done="check"),
            "check": human(
                instruction="Is the work good?",
                title="Check the work",
                on={"approve": "done", "reject": "work"},
                on_timeout="approve",
            ),
            "done": final(),
        },
    )
    machine(
        id="test_machine.wait",
        initial="asking",
        states={
            "asking": wait(event="answer", timeout="1h", on_done="answered", on_timeout="silent"),
            "answered": state(run=small, on_done="done"),
            "silent": final(),
            "done": final(),
        },
    )


machine_defs()


# --- an LLM step pointed at whatever the test configures -----------------------------------------


class Verdict(BaseModel):
    label: str
    score: float


PROBE = LLMTask(
    name="probe.classify",
    output_type=Verdict,
    instructions="Classify the text.",
    prompt=lambda d: d["text"],
    offline=lambda d: Verdict(label="offline", score=0.5),
)


# A long backoff: tests move past it by writing wake_at into the past, never by sleeping.
@step(
    pool="llm",
    retry=RetryPolicy(max_attempts=3, initial_backoff=60, max_backoff=60, jitter=False),
    timeout=30,
)
def classify(text: str) -> dict[str, Any]:
    return complete(PROBE, {"text": text}).result()


@workflow(name="test_llm.classify")
def classify_wf(ctx: Any, text: str = "hello", times: int = 1) -> list[dict[str, Any]]:
    return [ctx.run(classify, text) for _ in range(times)]
