"""What the LLM layer refuses, and how: an answer the journal cannot store is a retryable
MalformedAnswer billed as a failed call, and LLM settings that cannot work are system check
messages (review findings: a NUL failed the step for good, unbilled as a failure; a price of
``abc`` crashed the settings import; a typo in SLUICE_LLM_MODELS, an unknown output mode or a
timeout of 0 passed silently)."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core import checks

from pipelines.checks import check_models
from pipelines.llm import complete
from pipelines.llm.errors import ConfigurationError, MalformedAnswer
from pipelines.llm.pricing import checked_price
from tests.pipelines.fake_llm import FakeLLM
from tests.pipelines.machines import PROBE
from tests.pipelines.test_providers import backoff_over, step_row
from tests.support import Bell
from workflows import get_run, start
from workflows.core.calls import is_retryable

ROOT = Path(__file__).resolve().parents[2]


# --- answers the journal cannot store -----------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "label", "problem"),
    [
        ("openai-compatible:fake-model@{}", "calm\x00 exchange", "a NUL character"),
        ("anthropic:claude-x@{}", "calm\x00 exchange", "a NUL character"),
        # The OpenAI shape's JSON parser refuses a lone surrogate itself; the Anthropic SDK's
        # hands it on.
        ("anthropic:claude-x@{}", "half \ud800 a pair", "a lone surrogate"),
    ],
    ids=["nul-openai", "nul-anthropic", "lone-surrogate-anthropic"],
)
def test_an_unstorable_answer_is_a_retryable_malformed_answer(
    fake_llm: FakeLLM, keyed: Any, shape: str, label: str, problem: str
) -> None:
    fake_llm.answer = {"label": label, "score": 0.5}
    url = fake_llm.anthropic_url if shape.startswith("anthropic") else fake_llm.base_url
    with pytest.raises(MalformedAnswer, match=problem) as caught:
        complete(PROBE, {"text": "x"}, model=shape.format(url))
    assert is_retryable(caught.value)
    raw = caught.value.raw_text or ""
    assert "\x00" not in raw
    raw.encode("utf-8")  # storable itself


@pytest.mark.django_db(transaction=True)
def test_a_nul_in_an_answer_is_retried_and_each_attempt_billed_as_a_failed_call(
    bell: Bell, probe_model: FakeLLM
) -> None:
    probe_model.answer = {"label": "calm\x00 exchange", "score": 0.5}
    run = start("test_llm.classify", {"text": "hi"})
    for _ in range(4):
        bell.settle()
        backoff_over(run)
    run = get_run(run.pk)
    row = step_row(run)
    assert (run.status, row.status, row.attempt) == ("failed", "failed", 3)
    assert len(probe_model.requests) == 3
    assert row.error["type"] == "MalformedAnswer"
    assert "NUL character" in row.error["message"]
    assert row.usage["failed_call"] is True
    per_call = Decimal("0.000042")  # 120 in at $0.15/M + 40 out at $0.60/M
    assert row.cost == run.cost == per_call * 3


# --- settings -----------------------------------------------------------------------------------


def test_a_price_written_as_text_is_read_or_reported(settings: Any) -> None:
    """The settings keep SLUICE_LLM_PRICES entries from the environment as text."""
    assert checked_price("openai:gpt-5", ("1.25", " 10 ")) == (Decimal("1.25"), Decimal(10))
    for entry in [("abc", "10"), ("1", ""), ("nan", "1"), ("-1", "1"), "12", (True, 1)]:
        with pytest.raises(ConfigurationError, match=r"SLUICE_LLM_PRICES\['openai:gpt-5'\]"):
            checked_price("openai:gpt-5", entry)
    settings.SLUICE_LLM_PRICES = {"openai:gpt-5": ("abc", "10")}
    (error,) = [m for m in check_models() if m.level >= checks.ERROR]
    assert error.id == "pipelines.E003"
    assert "each price must be a number from 0 to 1,000,000" in error.msg


def test_an_unreadable_price_in_the_environment_is_a_check_error_not_a_crash() -> None:
    """Needs config/settings.py to keep environment prices as text (see pricing.checked_price):
    ``float("abc")`` there failed every process at start-up with a bare ValueError."""
    env = {
        **os.environ,
        "SLUICE_LLM_PRICES": "openai:gpt-5=abc/10,openai:gpt-6=2/8",
        "SLUICE_LLM_MODEL": "offline",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--tag", "pipelines"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "pipelines.E003" in done.stderr, done.stderr[-2000:]
    assert "SLUICE_LLM_PRICES['openai:gpt-5']" in done.stderr
    assert "openai:gpt-6" not in done.stderr  # a readable entry is fine


def test_a_models_key_that_names_no_pipeline_or_task_is_a_warning(settings: Any) -> None:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {
        "thread-analysis": "offline",
        "support_ticket": "offline",
        "document_batch.entities": "offline",
    }
    (warning,) = check_models()
    assert warning.id == "pipelines.W003"
    assert warning.level == checks.WARNING
    assert warning.msg == (
        "SLUICE_LLM_MODELS['thread-analysis'] names no pipeline or LLM task, so it sets no "
        "model; did you mean 'thread_analysis'?"
    )
    assert "Pipelines: document_batch, " in warning.hint
    assert "thread_analysis.analyze_darvo" in warning.hint


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("SLUICE_LLM_OUTPUT_MODE", "json", "SLUICE_LLM_OUTPUT_MODE is 'json', not one of tool"),
        ("SLUICE_LLM_TIMEOUT", 0.0, "SLUICE_LLM_TIMEOUT is 0.0"),
        ("SLUICE_LLM_TIMEOUT", -5.0, "SLUICE_LLM_TIMEOUT is -5.0"),
        ("SLUICE_LLM_TIMEOUT", float("nan"), "SLUICE_LLM_TIMEOUT is nan"),
    ],
)
def test_an_output_mode_or_timeout_that_cannot_work_is_a_check_error(
    settings: Any, setting: str, value: Any, words: str
) -> None:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    setattr(settings, setting, value)
    (error,) = check_models()
    assert (error.id, error.level) == ("pipelines.E004", checks.ERROR)
    assert error.msg.startswith(words)


@pytest.mark.parametrize("mode", ["tool", "native", "prompted"])
def test_the_documented_output_modes_pass(settings: Any, mode: str) -> None:
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    settings.SLUICE_LLM_OUTPUT_MODE = mode
    assert check_models() == []
