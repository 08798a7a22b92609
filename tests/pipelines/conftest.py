"""Fixtures of the pipeline tests: the fake LLM server, models pointed at it, gate helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.pipelines.fake_llm import FakeLLM, serve


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A fake OpenAI-compatible + Anthropic-shaped provider on 127.0.0.1 (real HTTP)."""
    with serve() as server:
        yield server


@pytest.fixture
def offline(settings: Any) -> Any:
    """The default provider, stated explicitly (a developer's env must not leak in)."""
    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    settings.SLUICE_LLM_OFFLINE_LATENCY = 0.0
    return settings


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    """Pool configurations are cached per process for a few seconds; a flushed test database
    no longer has the rows the cache remembers."""
    from workflows.core import pools

    pools.clear_cache()
    yield
    pools.clear_cache()


@pytest.fixture
def keyed(settings: Any) -> Any:
    """A key and a short timeout for the fake provider's real-provider shapes."""
    settings.SLUICE_LLM_API_KEY = "test-key"
    settings.SLUICE_LLM_TIMEOUT = 5.0
    settings.SLUICE_LLM_OUTPUT_MODE = "tool"
    return settings


@pytest.fixture
def probe_model(fake_llm: FakeLLM, keyed: Any) -> FakeLLM:
    """The probe task answered by the fake server, priced like gpt-4o-mini."""
    keyed.SLUICE_LLM_MODELS = {"probe": f"openai-compatible:fake-model@{fake_llm.base_url}"}
    keyed.SLUICE_LLM_PRICES = {
        **keyed.SLUICE_LLM_PRICES,
        "openai-compatible:fake-model": (0.15, 0.60),
    }
    return fake_llm
