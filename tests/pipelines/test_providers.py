"""LLM providers over real HTTP (a fake OpenAI-compatible and Anthropic-shaped server): answers
are validated, faults are retried or failed as specified, the journal records attempts and
usage, and the per-run budget stops a run."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from pipelines.llm import (
    AnswerRefused,
    MalformedAnswer,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    complete,
    config,
    parse_model,
    pool_for,
)
from tests.pipelines import fake_llm
from tests.pipelines.fake_llm import FakeLLM, empty_choices
from tests.pipelines.machines import PROBE, Verdict
from tests.support import Bell
from workflows import get_run, start
from workflows.core.calls import is_retryable
from workflows.models import Run, Step

SHAPES = ["openai-compatible", "anthropic"]


def model_string(fake: FakeLLM, shape: str) -> str:
    if shape == "anthropic":
        return f"anthropic:claude-fake@{fake.anthropic_url}"
    return f"openai-compatible:fake-model@{fake.base_url}"


# --- one call ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_it_returns_a_validated_answer_with_its_usage(
    fake_llm: FakeLLM, keyed: Any, shape: str
) -> None:
    fake_llm.answer = {"label": "calm", "score": 0.25}
    answer = complete(PROBE, {"text": "All good here."}, model=model_string(fake_llm, shape))
    assert answer.output == Verdict(label="calm", score=0.25)
    assert (answer.input_tokens, answer.output_tokens) == (120, 40)
    assert answer.generated_by == (
        "anthropic:claude-fake" if shape == "anthropic" else "openai-compatible:fake-model"
    )
    assert answer.result()["generated_by"] == answer.generated_by
    (request,) = fake_llm.requests
    assert request.path.endswith("/messages" if shape == "anthropic" else "/chat/completions")
    assert "All good here." in str(request.body["messages"])
    auth = request.headers.get("x-api-key") or request.headers.get("authorization")
    assert auth in ("test-key", "Bearer test-key")


def test_it_prices_a_call_from_the_table(fake_llm: FakeLLM, keyed: Any) -> None:
    keyed.SLUICE_LLM_BASE_URL = fake_llm.base_url
    answer = complete(PROBE, {"text": "x"}, model="openai:gpt-4o-mini")
    # 120 input tokens at $0.15/M + 40 output tokens at $0.60/M
    assert answer.cost == Decimal("0.000042")
    assert fake_llm.requests[0].body["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_it_supports_other_structured_output_modes(
    fake_llm: FakeLLM, keyed: Any, mode: str
) -> None:
    keyed.SLUICE_LLM_OUTPUT_MODE = mode
    fake_llm.answer = {"label": mode, "score": 1.0}
    answer = complete(PROBE, {"text": "x"}, model=model_string(fake_llm, "openai-compatible"))
    assert answer.output.label == mode
    assert "tools" not in fake_llm.requests[0].body


FAULTS: list[tuple[Any, type[Exception], bool]] = [
    (fake_llm.status(429, retry_after=7), RateLimited, True),
    (fake_llm.status(500), ProviderUnavailable, True),
    (fake_llm.status(400), RequestRejected, False),
    (fake_llm.status(401), RequestRejected, False),
    (fake_llm.malformed(), MalformedAnswer, True),
    (fake_llm.wrong_schema(), MalformedAnswer, True),
    (fake_llm.bad_json_args(), MalformedAnswer, True),
    (fake_llm.slow(2.0), ProviderTimeout, True),
    (fake_llm.refusal(), AnswerRefused, False),
    (fake_llm.cut_off(), RequestRejected, False),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("fault", "error", "retryable"), FAULTS, ids=[f"{f.kind}{f.status or ''}" for f, _, _ in FAULTS]
)
def test_each_fault_becomes_the_error_the_engine_expects(
    fake_llm: FakeLLM,
    keyed: Any,
    shape: str,
    fault: Any,
    error: type[Exception],
    retryable: bool,
) -> None:
    keyed.SLUICE_LLM_TIMEOUT = 0.5
    fake_llm.fail(fault)
    with pytest.raises(error) as info:
        complete(PROBE, {"text": "x"}, model=model_string(fake_llm, shape))
    exc = info.value
    assert is_retryable(exc) is retryable
    assert str(exc).startswith(model_string(fake_llm, shape).split("@")[0])
    if fault.kind == "status" and fault.status == 429:
        assert exc.retry_after == 7.0  # type: ignore[attr-defined]
    if fault.kind == "wrong_schema":
        assert exc.raw_text == '{"unexpected": true}'  # type: ignore[attr-defined]
        assert "Field required" in str(exc)
    if fault.kind == "bad_json_args":
        assert exc.raw_text == '{"summary": "cut off'  # type: ignore[attr-defined]
    if fault.kind == "malformed":
        assert exc.raw_text.startswith('{"id": "chatcmpl-x"')  # type: ignore[attr-defined]
    assert len(fake_llm.requests) == 1  # the SDK and pydantic-ai did not retry by themselves


def test_provider_steps_run_in_their_providers_pool(settings: Any) -> None:
    settings.SLUICE_LLM_MODELS = {
        "thread_analysis": "openai:gpt-4o-mini",
        "support_ticket.grade": "anthropic:claude-3-5-haiku-latest",
    }
    assert pool_for("thread_analysis.analyze_darvo") == "llm-openai"
    assert pool_for("support_ticket.grade") == "llm-anthropic"
    assert pool_for("support_ticket.draft") == "llm"  # offline
    for pool in ("llm-openai", "llm-anthropic", "llm-openai-compatible"):
        assert settings.SLUICE_POOLS[pool]["queue"] == "llm"
        assert settings.SLUICE_POOLS[pool]["max_concurrency"]


def test_model_strings_name_their_server() -> None:
    assert parse_model("ollama:llama3.1").base_url == "http://127.0.0.1:11434/v1"
    assert parse_model("vllm:qwen@http://gpu:8000/v1").base_url == "http://gpu:8000/v1"
    assert parse_model("offline").offline
    assert "sk-" not in repr(config.ModelSpec("openai", "m", api_key="sk-secret"))


# --- through the engine -----------------------------------------------------------------------

engine = pytest.mark.django_db(transaction=True)


def step_row(run: Run) -> Step:
    return Step.objects.get(run=run, name="classify")


def backoff_over(run: Run) -> None:
    """Pretend the retry backoff has passed (deadlines are columns: write the past)."""
    Step.objects.filter(run=run, status="retrying").update(
        wake_at=timezone.now() - timedelta(seconds=1)
    )


@engine
def test_a_429_is_retried_after_the_providers_retry_after(bell: Bell, probe_model: FakeLLM) -> None:
    probe_model.fail(fake_llm.status(429, retry_after=30))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt, row.error["type"]) == ("retrying", 1, "RateLimited")
    # Retry-After wins over the step's 10 ms backoff.
    assert row.wake_at - row.finished_at >= timedelta(seconds=29)
    backoff_over(run)
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt) == ("succeeded", 2)
    assert row.usage["provider"] == "openai-compatible"
    assert row.usage["model"] == "fake-model"
    assert (row.usage["input_tokens"], row.usage["output_tokens"]) == (120, 40)
    assert row.usage["latency_ms"] >= 0
    assert row.cost == Decimal("0.000042")
    assert get_run(run.pk).status == "succeeded"
    assert len(probe_model.requests) == 2


@engine
@pytest.mark.parametrize("header", ["99999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_of_years_waits_an_hour_at_most(
    bell: Bell, probe_model: FakeLLM, header: str
) -> None:
    """A provider's Retry-After is outside input: years of it overflowed the wake-up time (an
    OverflowError failed the run) or parked the step until 9999."""
    probe_model.fail(fake_llm.status(429, retry_after=header))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt, row.error["type"]) == ("retrying", 1, "RateLimited")
    assert timedelta(minutes=59) <= row.wake_at - row.finished_at <= timedelta(hours=1)
    backoff_over(run)
    bell.settle()
    assert get_run(run.pk).status == "succeeded"


@engine
def test_a_503s_retry_after_is_honoured_too(bell: Bell, probe_model: FakeLLM) -> None:
    probe_model.fail(fake_llm.status(503, retry_after=600))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.error["type"]) == ("retrying", "ProviderUnavailable")
    assert row.wake_at - row.finished_at >= timedelta(seconds=599)  # not the SDK's own 60 s


def test_an_answer_the_sdk_cannot_read_is_a_malformed_answer(fake_llm: FakeLLM, keyed: Any) -> None:
    """``"choices": []`` made the SDK raise a bare IndexError, journaled as it was."""
    fake_llm.fail(empty_choices())
    with pytest.raises(MalformedAnswer, match="malformed response: IndexError") as info:
        complete(PROBE, {"text": "x"}, model=model_string(fake_llm, "openai-compatible"))
    assert is_retryable(info.value)


@engine
@pytest.mark.parametrize("code", [401, 500])
def test_a_key_the_provider_echoes_is_not_journaled(
    bell: Bell, probe_model: FakeLLM, keyed: Any, code: int
) -> None:
    keyed.SLUICE_LLM_API_KEY = "sk-SECRET-abc123456"
    probe_model.fail(fake_llm.status(code, echo_auth=True))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert row.error["type"] in ("RequestRejected", "ProviderUnavailable")
    assert "SECRET" not in json.dumps(row.error) and "SECRET" not in json.dumps(
        get_run(run.pk).error or {}
    )
    if code == 500:  # the body is quoted, the key masked
        assert "you sent Bearer ***" in row.error["message"]


@engine
def test_5xx_and_timeouts_are_retried_until_an_answer_comes(
    bell: Bell,
    probe_model: FakeLLM,
    settings: Any,
) -> None:
    settings.SLUICE_LLM_TIMEOUT = 0.5
    probe_model.fail(fake_llm.status(500), fake_llm.slow(2.0))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    assert step_row(run).error["type"] == "ProviderUnavailable"
    backoff_over(run)
    bell.settle()
    assert step_row(run).error["type"] == "ProviderTimeout"
    backoff_over(run)
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt, row.error) == ("succeeded", 3, None)
    assert [r.fault for r in probe_model.requests] == ["status", "slow", ""]


@pytest.mark.parametrize("status", [400, 401])
@engine
def test_a_rejected_request_fails_at_once(bell: Bell, probe_model: FakeLLM, status: int) -> None:
    probe_model.fail(fake_llm.status(status))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt, row.error["type"]) == ("failed", 1, "RequestRejected")
    run = get_run(run.pk)
    assert run.status == "failed"
    assert "not retried" in run.error["message"]
    assert len(probe_model.requests) == 1


@engine
def test_a_refusal_fails_at_once_with_the_models_words_and_its_cost(
    bell: Bell, probe_model: FakeLLM
) -> None:
    """A refusal was reported as "the answer does not match …" and retried: each retry was
    another paid call, refused the same way."""
    probe_model.fail(fake_llm.refusal())
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt, row.error["type"]) == ("failed", 1, "AnswerRefused")
    assert "refused to answer" in row.error["message"]
    assert row.error["raw_text"] == "I can't help with that request."
    assert row.usage["failed_call"] is True and row.cost == Decimal("0.000042")
    assert get_run(run.pk).status == "failed"
    assert len(probe_model.requests) == 1


@engine
def test_a_malformed_answer_keeps_its_raw_text_in_the_journal(
    bell: Bell, probe_model: FakeLLM
) -> None:
    probe_model.fail(fake_llm.wrong_schema())
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.error["type"]) == ("retrying", "MalformedAnswer")
    assert row.error["raw_text"] == '{"unexpected": true}'
    # The failed attempt used tokens: they are journaled and charged.
    assert row.usage["failed_call"] is True
    assert row.cost == Decimal("0.000042")
    backoff_over(run)
    bell.settle()
    row = step_row(run)
    assert (row.status, row.attempt) == ("succeeded", 2)
    assert row.cost == Decimal("0.000084")  # both attempts
    assert get_run(run.pk).cost == Decimal("0.000084")


@engine
def test_malformed_answers_fail_the_step_after_its_attempts(
    bell: Bell, probe_model: FakeLLM
) -> None:
    probe_model.fail(fake_llm.malformed(), fake_llm.malformed(), fake_llm.malformed())
    run = start("test_llm.classify", {"text": "hi"})
    for _ in range(3):
        bell.settle()
        backoff_over(run)
    row = step_row(run)
    assert (row.status, row.attempt, row.error["type"]) == ("failed", 3, "MalformedAnswer")
    assert row.error["raw_text"].startswith('{"id": "chatcmpl-x"')
    assert get_run(run.pk).status == "failed"


@engine
def test_the_budget_stops_a_run_before_the_step_that_would_exceed_it(
    bell: Bell,
    probe_model: FakeLLM,
) -> None:
    run = start("test_llm.classify", {"text": "hi", "times": 5}, max_cost=Decimal("0.0001"))
    bell.settle()
    run = get_run(run.pk)
    assert run.status == "failed"
    assert run.error["type"] == "BudgetExceeded"
    assert "stopped before step 'classify'" in run.error["message"]
    assert run.cost == Decimal("0.000126")  # three calls at $0.000042
    assert len(probe_model.requests) == 3
