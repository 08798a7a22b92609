"""Edges of the LLM layer and of budgets found by the eleventh session's review: what a
provider reports is checked before it is priced or journaled, a retry is another paid call
under the budget, and a machine that reached its final state ends there.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from django.core import checks

from pipelines.checks import check_models
from pipelines.llm import complete
from pipelines.llm.errors import ConfigurationError, MalformedAnswer, ProviderTimeout
from pipelines.machine import final, human, machine, state, unregister
from tests.pipelines import fake_llm
from tests.pipelines.fake_llm import FakeLLM
from tests.pipelines.machines import PROBE
from tests.pipelines.test_providers import backoff_over, step_row
from tests.support import Bell
from workflows import get_run, record_usage, start, step, workflow
from workflows.core.calls import is_retryable
from workflows.models import Run, Step

engine = pytest.mark.django_db(transaction=True)


def settle(bell: Bell, run: Run, rounds: int = 5) -> Run:
    for _ in range(rounds):
        bell.settle()
        backoff_over(run)
    return get_run(run.pk)


# --- what the provider reports ------------------------------------------------------------------


@engine
def test_an_implausible_token_count_is_a_malformed_answer_not_a_broken_run(
    bell: Bell, probe_model: FakeLLM
) -> None:
    """Priced, 10**15 tokens overflowed the run's cost: on SQLite every page listing the run
    then failed, on PostgreSQL the step stayed running forever."""
    probe_model.input_tokens = 10**15
    run = settle(bell, start("test_llm.classify", {"text": "hi"}))
    assert run.status == "failed" and run.cost == 0
    row = step_row(run)
    assert row.status == "failed" and row.attempt == 3  # retried, as a malformed answer is
    assert row.error["type"] == "MalformedAnswer"
    assert Run.objects.filter(pk=run.pk).exists()  # readable


@engine
# pydantic-ai warns of the negative count (an error under the suite's warning filter) and
# reads no usage: the call is journaled with 0 tokens, never a negative cost.
@pytest.mark.filterwarnings("ignore::pydantic_ai._warnings.UsageExtractionFailedWarning")
def test_a_negative_token_count_costs_nothing(bell: Bell, probe_model: FakeLLM) -> None:
    probe_model.input_tokens = -5
    run = settle(bell, start("test_llm.classify", {"text": "hi"}))
    assert run.status == "succeeded" and run.cost >= 0
    assert step_row(run).usage["input_tokens"] >= 0


@pytest.mark.parametrize("body", [b"[]", b"null", b'"hello"'], ids=["a list", "null", "a string"])
def test_an_unreadable_body_is_a_retryable_malformed_answer(
    fake_llm: FakeLLM, keyed: Any, body: bytes
) -> None:
    fake_llm.fail(fake_llm_raw(body))
    with pytest.raises(MalformedAnswer) as caught:
        complete(PROBE, {"text": "x"}, model=f"openai-compatible:fake-model@{fake_llm.base_url}")
    assert is_retryable(caught.value)


def test_an_anthropic_answer_without_content_is_a_malformed_answer_with_its_usage(
    fake_llm: FakeLLM, keyed: Any
) -> None:
    answer = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "x",
        "content": None,
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 5},
    }
    fake_llm.fail(fake_llm_raw(json.dumps(answer).encode()))
    with pytest.raises(MalformedAnswer) as caught:
        complete(PROBE, {"text": "x"}, model=f"anthropic:claude-x@{fake_llm.anthropic_url}")
    assert is_retryable(caught.value)


# pydantic-ai warns when it cannot read Anthropic's usage (an error under the suite's filter).
@pytest.mark.filterwarnings("ignore::pydantic_ai._warnings.UsageExtractionFailedWarning")
@pytest.mark.parametrize("tokens", [None, 1.5, "7x"], ids=["null", "a fraction", "text"])
@pytest.mark.parametrize("shape", ["openai-compatible:fake-model@{}", "anthropic:claude-x@{}"])
def test_odd_usage_counts_are_a_malformed_response_not_a_wrong_answer(
    fake_llm: FakeLLM, keyed: Any, tokens: Any, shape: str
) -> None:
    """A provider's usage with a null, fractional or text token count failed the call as "the
    answer does not match Verdict", which sends whoever reads it to the pipeline's output
    model. The reply's envelope is the provider's: its message says so, and it is retried."""
    fake_llm.input_tokens = tokens
    url = fake_llm.anthropic_url if shape.startswith("anthropic") else fake_llm.base_url
    try:
        answer = complete(PROBE, {"text": "x"}, model=shape.format(url))
    except MalformedAnswer as error:
        assert is_retryable(error)
        assert "malformed response" in str(error) and "does not match" not in str(error)
        assert "input_tokens" in str(error) or "prompt_tokens" in str(error)
    else:  # an SDK that reads such a count as no count at all
        assert answer.input_tokens == 0 and answer.cost >= 0


class Buggy(pydantic.BaseModel):
    label: str
    score: float

    @pydantic.field_validator("label")
    @classmethod
    def _broken(cls, v: str) -> str:
        return v + None  # type: ignore[operator]  # a bug of ours: a TypeError


def test_a_bug_in_our_own_output_model_is_not_retried_as_a_malformed_answer(
    fake_llm: FakeLLM, keyed: Any
) -> None:
    """Only the SDK's reading of an answer maps built-in errors to MalformedAnswer: the same
    error from our own validator would be paid for max_attempts times (review finding)."""
    from pipelines.llm import config, providers

    spec = config.parse_model(f"openai-compatible:fake-model@{fake_llm.base_url}")
    with pytest.raises(TypeError) as caught:
        providers.ask(spec, instructions="x", prompt="y", output_type=Buggy)
    assert not isinstance(caught.value, MalformedAnswer) and not is_retryable(caught.value)


def test_nan_in_an_answer_is_a_malformed_answer(fake_llm: FakeLLM, keyed: Any) -> None:
    fake_llm.answer = {"label": "x", "score": float("nan")}
    with pytest.raises(MalformedAnswer, match="NaN or Infinity") as caught:
        complete(PROBE, {"text": "x"}, model=f"openai-compatible:fake-model@{fake_llm.base_url}")
    assert is_retryable(caught.value)


def test_the_llm_timeout_bounds_the_whole_request(fake_llm: FakeLLM, keyed: Any) -> None:
    """A server trickling its answer never trips the HTTP client's per-read timeout."""
    keyed.SLUICE_LLM_TIMEOUT = 1.0
    fake_llm.fail(fake_llm_drip(6.0))
    t0 = time.monotonic()
    with pytest.raises(ProviderTimeout, match="no answer within 1s"):
        complete(PROBE, {"text": "x"}, model=f"openai-compatible:fake-model@{fake_llm.base_url}")
    assert time.monotonic() - t0 < 4


def fake_llm_raw(body: bytes) -> fake_llm.Fault:
    return fake_llm.raw(body)


def fake_llm_drip(seconds: float) -> fake_llm.Fault:
    return fake_llm.drip(seconds)


# --- the price table ----------------------------------------------------------------------------


@pytest.mark.parametrize("price", [(float("nan"), 1.0), (-1.0, 1.0), ("x", 1), (1.0,)])
def test_a_broken_price_is_a_system_check_error_and_fails_before_the_call(
    fake_llm: FakeLLM, keyed: Any, price: Any
) -> None:
    keyed.SLUICE_LLM_MODELS = {"probe": f"openai-compatible:fake-model@{fake_llm.base_url}"}
    keyed.SLUICE_LLM_PRICES = {"openai-compatible:fake-model": price}
    errors = [m for m in check_models() if m.level >= checks.ERROR]
    assert [m.id for m in errors] == ["pipelines.E003", "pipelines.E003"]
    assert "SLUICE_LLM_PRICES['openai-compatible:fake-model']" in errors[0].msg
    with pytest.raises(ConfigurationError) as caught:
        complete(PROBE, {"text": "x"}, model=f"openai-compatible:fake-model@{fake_llm.base_url}")
    assert not is_retryable(caught.value)
    assert fake_llm.requests == []  # nothing was paid for


# --- record_usage -------------------------------------------------------------------------------


@step
def spends(amount: str) -> int:
    record_usage(cost=Decimal(amount))
    return 1


@workflow(name="test.llm_edges_spends")
def spends_wf(ctx: Any, amounts: list[str]) -> list[int]:
    return [ctx.run(spends, a) for a in amounts]


@engine
@pytest.mark.parametrize(
    ("amount", "message"),
    [("-5", "0 or more"), ("100000000", "must stay under")],
    ids=["negative", "too large"],
)
def test_a_cost_that_is_negative_or_does_not_fit_fails_the_step(
    bell: Bell, amount: str, message: str
) -> None:
    run = start("test.llm_edges_spends", {"amounts": ["1", amount, "1"]}, max_cost=Decimal(10))
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed" and run.cost == 1
    bad = Step.objects.get(run=run, position=2)
    assert bad.status == "failed" and message in bad.error["message"]


# --- budgets and retries ------------------------------------------------------------------------


@engine
def test_a_retry_is_another_paid_call_and_stops_at_the_budget(
    bell: Bell, probe_model: FakeLLM
) -> None:
    """The first attempt's answer did not match (it was paid for, $0.000042): over a $0.00004
    budget, no second call is made (before, all three were)."""
    probe_model.fail(fake_llm.wrong_schema(), fake_llm.wrong_schema(), fake_llm.wrong_schema())
    run = settle(bell, start("test_llm.classify", {"text": "hi"}, max_cost=Decimal("0.00004")))
    assert len(probe_model.requests) == 1
    assert run.status == "failed" and run.error["type"] == "BudgetExceeded"
    assert run.cost == Decimal("0.000042")


@step
def costly(data: dict[str, Any]) -> dict[str, Any]:
    record_usage(cost=Decimal("0.30"))
    return {"analysis": "done"}


UNDONE: list[Any] = []


def undo_costly(data: dict[str, Any], result: Any = None) -> None:
    UNDONE.append(result)


@engine
@pytest.mark.parametrize("with_gate", [False, True])
def test_a_machine_whose_last_step_crossed_its_budget_ends_in_its_final_state(
    bell: Bell, with_gate: bool
) -> None:
    """Reaching a final state costs nothing: the run succeeds with what it did, and nothing is
    undone (before, it failed at the final-state marker and ran its undos)."""
    from reviews.models import Gate
    from reviews.services import decide_gate

    unregister("test.llm_edges_final")
    states: dict[str, Any] = {
        "a": state(run=costly, on_done="h" if with_gate else "done", compensate=undo_costly),
        "done": final(),
    }
    if with_gate:
        states["h"] = human(instruction="ok?", on={"approve": "done", "reject": "done"})
    machine(id="test.llm_edges_final", initial="a", states=states)
    UNDONE.clear()
    try:
        run = start("test.llm_edges_final", {}, max_cost=Decimal("0.25"))
        bell.settle()
        if with_gate:
            gate = Gate.objects.get(run_id=run.pk)
            decide_gate(gate.pk, outcome="approve", actor="ana")
            bell.settle()
        run = get_run(run.pk)
        assert run.status == "succeeded", run.error
        assert run.output["final_state"] == "done" and UNDONE == []
    finally:
        unregister("test.llm_edges_final")


# --- the run graph of a removed machine version -------------------------------------------------


@engine
def test_the_graph_of_a_run_whose_machine_version_was_removed_is_the_current_one(
    bell: Bell,
) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    from tests.pipelines.machines import count_round

    def version(n: int) -> None:
        machine(
            id="test.llm_edges_gone",
            version=n,
            initial="work",
            states={
                "work": state(run=count_round, on_done="check"),
                "check": human(instruction="ok?", on={"approve": "done", "reject": "work"}),
                "done": final(),
            },
        )

    unregister("test.llm_edges_gone")
    version(1)
    try:
        run = start("test.llm_edges_gone", {})
        bell.settle()
        unregister("test.llm_edges_gone")
        version(2)  # version 1 removed, as docs/pipelines.md says once no run of it is active
        c = Client()
        c.force_login(User.objects.create_superuser("adm", "a@example.com", "pw"))
        r = c.get(f"/pipelines/runs/{run.pk}/graph/")
        assert r.status_code == 200
        assert r.json()["marked"] is False and "stateDiagram" in r.json()["mermaid"]
        assert c.get(f"/runs/{run.pk}/").status_code == 200
    finally:
        unregister("test.llm_edges_gone")
