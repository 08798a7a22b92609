"""LLM providers for pipelines: pydantic-ai for OpenAI, Anthropic and OpenAI-compatible
servers, and the offline provider (the default) that needs no key and no network.

    from pipelines.llm import LLMTask, complete
    answer = complete(SUMMARIZE, {"text": text})      # -> Completion
    answer.output, answer.generated_by                # a validated model, "offline" / "openai:…"
"""

from __future__ import annotations

from pipelines.llm.config import ModelSpec, model_for, parse_model, pool_for
from pipelines.llm.errors import (
    AnswerRefused,
    ConfigurationError,
    MalformedAnswer,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
)
from pipelines.llm.tasks import OFFLINE_NOTE, Completion, LLMTask, complete

__all__ = [
    "OFFLINE_NOTE",
    "AnswerRefused",
    "Completion",
    "ConfigurationError",
    "LLMTask",
    "MalformedAnswer",
    "ModelSpec",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RateLimited",
    "RequestRejected",
    "complete",
    "model_for",
    "parse_model",
    "pool_for",
]
