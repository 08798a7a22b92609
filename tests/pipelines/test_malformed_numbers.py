"""A provider's answer that Python's JSON reader cannot take at all (an integer of thousands of
digits, nesting deeper than the interpreter's stack) is a ``MalformedAnswer`` like any other
unreadable answer: retried, naming the provider, and the failed call journaled in usage. It
failed the step with a bare ``ValueError``/``RecursionError`` raised inside the standard
library's ``json``, which did not look like the SDK's doing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipelines.llm import MalformedAnswer, complete, parse_model
from pipelines.llm.providers import translate
from tests.pipelines.fake_llm import FakeLLM, raw
from tests.pipelines.machines import PROBE
from tests.pipelines.test_providers import backoff_over, step_row
from tests.support import Bell
from workflows import get_run, start
from workflows.core.calls import is_retryable

USAGE = '{"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}'


def answer(usage: str = USAGE) -> bytes:
    args = json.dumps(json.dumps({"label": "x", "score": 0.5})).encode()
    return (
        b'{"id":"c1","object":"chat.completion","created":0,"model":"fake-model","choices":'
        b'[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1",'
        b'"type":"function","function":{"name":"final_result","arguments":'
        + args
        + b'}}]},"finish_reason":"tool_calls"}],"usage":'
        + usage.encode()
        + b"}"
    )


BODIES = {
    # int("9" * 5000) is past Python's 4,300-digit limit: ValueError inside json.
    "a usage count of 5,000 digits": answer(
        '{"prompt_tokens": ' + "9" * 5000 + ', "completion_tokens": 5, "total_tokens": 15}'
    ),
    # json's reader recurses once per level: RecursionError inside json.
    "a body nested 100,000 levels": b'{"id":"c1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("case", list(BODIES))
def test_an_answer_json_cannot_read_is_a_malformed_answer(
    fake_llm: FakeLLM, keyed: Any, case: str
) -> None:
    fake_llm.fail(raw(BODIES[case]))
    model = f"openai-compatible:fake-model@{fake_llm.base_url}"
    with pytest.raises(MalformedAnswer, match="malformed response") as info:
        complete(PROBE, {"text": "x"}, model=model)
    assert is_retryable(info.value)
    assert str(info.value).startswith("openai-compatible:fake-model: ")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", list(BODIES))
def test_the_failed_call_is_journaled_and_retried(
    bell: Bell, probe_model: FakeLLM, case: str
) -> None:
    probe_model.fail(raw(BODIES[case]))
    run = start("test_llm.classify", {"text": "hi"})
    bell.settle()
    row = step_row(run)
    assert (row.status, row.error["type"]) == ("retrying", "MalformedAnswer")
    assert row.usage["failed_call"] is True
    assert row.usage["provider"] == "openai-compatible"
    backoff_over(run)
    bell.settle()
    assert (step_row(run).status, get_run(run.pk).status) == ("succeeded", "succeeded")


def test_our_own_value_error_is_still_not_a_malformed_answer() -> None:
    """A ValueError or RecursionError raised in our code (an output model's validator, say)
    stays what it is: retrying a paid call cannot fix it."""
    spec = parse_model("openai-compatible:fake-model@http://127.0.0.1:9/v1")
    for read in (_too_many_digits, _too_deep):
        with pytest.raises((ValueError, RecursionError)) as info:
            read()
        assert translate(info.value, spec, [], dict) is None


def _too_many_digits() -> None:
    json.loads("9" * 5000)


def _too_deep() -> None:
    json.loads("[" * 100_000 + "]" * 100_000)
