"""Which model answers which LLM task: model strings from settings, parsed into ``ModelSpec``.

A model string is ``provider:model`` with an optional ``@base_url``::

    offline                                   the built-in offline analyzer (the default)
    openai:gpt-4o-mini                        OpenAI (OPENAI_API_KEY or SLUICE_LLM_API_KEY)
    anthropic:claude-3-5-haiku-latest         Anthropic (ANTHROPIC_API_KEY or SLUICE_LLM_API_KEY)
    openai-compatible:qwen2.5@http://gpu:8000/v1   any OpenAI-compatible server by base URL
    ollama:llama3.1 / vllm:… / llamacpp:…     the same, with that server's usual local URL

The model for a task ``<pipeline>.<task>`` is the first of ``SLUICE_LLM_MODELS[<pipeline>.<task>]``,
``SLUICE_LLM_MODELS[<pipeline>]`` and ``SLUICE_LLM_MODEL``. ``SLUICE_LLM_BASE_URL`` gives the
base URL of ``openai`` / ``openai-compatible`` models that do not name one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from pipelines.llm.errors import ConfigurationError

OFFLINE = "offline"
COMPATIBLE = "openai-compatible"
PROVIDERS = (OFFLINE, "openai", "anthropic", COMPATIBLE)

# Aliases for OpenAI-compatible servers, with the URL each listens on out of the box.
LOCAL_SERVERS = {
    "ollama": "http://127.0.0.1:11434/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "llamacpp": "http://127.0.0.1:8080/v1",
}

OFFLINE_MODEL = "offline-lexicon-1"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string. ``api_key`` is kept out of ``repr`` (it ends up in logs)."""

    provider: str
    model: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)

    @property
    def offline(self) -> bool:
        return self.provider == OFFLINE

    @property
    def name(self) -> str:
        """``provider:model``: the key of the price table and what the journal records."""
        return OFFLINE if self.offline else f"{self.provider}:{self.model}"

    @property
    def pool(self) -> str:
        """The engine pool LLM steps of this provider run in (per-provider limits)."""
        return "llm" if self.offline else f"llm-{self.provider}"


def parse_model(value: str) -> ModelSpec:
    """Parse a model string; raise ``ConfigurationError`` naming what is wrong."""
    text = (value or "").strip()
    if not text:
        raise ConfigurationError(
            "empty model string (expected e.g. 'offline' or 'openai:gpt-4o-mini')"
        )
    text, _, base_url = text.partition("@")
    provider, _, model = text.partition(":")
    provider = provider.strip().lower()
    model = model.strip()
    if provider == OFFLINE:
        return ModelSpec(OFFLINE, model or OFFLINE_MODEL)
    if provider in LOCAL_SERVERS:
        base_url = base_url or _setting("SLUICE_LLM_BASE_URL", "") or LOCAL_SERVERS[provider]
        provider = COMPATIBLE
    if provider not in PROVIDERS:
        raise ConfigurationError(
            f"unknown LLM provider {provider!r} in {value!r}; use one of "
            f"{', '.join(PROVIDERS + tuple(LOCAL_SERVERS))}"
        )
    if not model:
        raise ConfigurationError(
            f"model string {value!r} names no model (expected '{provider}:<model>')"
        )
    if provider in ("openai", COMPATIBLE):
        base_url = base_url or _setting("SLUICE_LLM_BASE_URL", "")
    if provider == COMPATIBLE and not base_url:
        raise ConfigurationError(
            f"{value!r}: an OpenAI-compatible model needs a base URL "
            "('openai-compatible:<model>@http://host:port/v1' or SLUICE_LLM_BASE_URL)"
        )
    return ModelSpec(provider, model, base_url=base_url, api_key=_api_key(provider))


def _api_key(provider: str) -> str:
    explicit = _setting("SLUICE_LLM_API_KEY", "")
    if explicit:
        return str(explicit)
    if provider == "openai":
        return os.environ.get("OPENAI_API_KEY", "")
    if provider == "anthropic":
        return os.environ.get("ANTHROPIC_API_KEY", "")
    # Local servers usually ignore the key, but the OpenAI SDK insists on one.
    return "not-needed"


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def model_string_for(task: str) -> str:
    """The configured model string for ``<pipeline>.<task>`` (most specific setting wins)."""
    overrides: dict[str, str] = dict(_setting("SLUICE_LLM_MODELS", {}) or {})
    pipeline = task.split(".", 1)[0]
    for key in (task, pipeline):
        if overrides.get(key):
            return overrides[key]
    return str(_setting("SLUICE_LLM_MODEL", OFFLINE) or OFFLINE)


def model_for(task: str) -> ModelSpec:
    """The model that answers ``task`` under the current settings."""
    return parse_model(model_string_for(task))


def pool_for(task: str) -> str:
    """The pool of the step that runs ``task``; an unparsable setting falls back to ``llm``
    (the system check reports the setting, and the call itself raises)."""
    try:
        return model_for(task).pool
    except ConfigurationError:
        return "llm"


def timeout() -> float:
    """Seconds one provider request may take (the HTTP client's timeout)."""
    return float(_setting("SLUICE_LLM_TIMEOUT", 60.0))


def step_timeout() -> float:
    """The engine's step timeout for LLM steps: the request timeout plus room to spare, so the
    HTTP client's own timeout (a clean, retryable ``ProviderTimeout``) normally fires first."""
    return timeout() + 15.0
