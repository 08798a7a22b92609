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
