"""Errors of LLM calls, shaped for the engine's retry logic.

The engine reads three attributes from an exception raised by a step (see
``docs/engine-for-apps.md``): ``retryable`` (False fails the step at once), ``retry_after``
(seconds, honoured over the backoff) and ``raw_text`` (kept in the journal's error record).
Every provider failure is turned into one of these classes, so the retry decision is made in
one place (``pipelines.llm.providers.translate``) and the journal says what happened in words.
"""

from __future__ import annotations


class ProviderError(Exception):
    """A call to an LLM provider failed. Retryable unless a subclass says otherwise."""

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        raw_text: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.raw_text = raw_text


class RateLimited(ProviderError):
    """HTTP 429: the provider asked us to slow down (``retry_after`` when it said how long)."""


class ProviderUnavailable(ProviderError):
    """5xx, a refused or dropped connection: worth another attempt after a backoff."""


class ProviderTimeout(ProviderError):
    """No answer within ``SLUICE_LLM_TIMEOUT``."""


class MalformedAnswer(ProviderError):
    """The answer was not JSON, or did not match the output schema. ``raw_text`` keeps it."""


class RequestRejected(ProviderError):
    """HTTP 400/401/403/404/422 or exhausted quota: sending the same request again cannot help."""

    retryable = False


class AnswerRefused(ProviderError):
    """The model declined to answer (a refusal, or the provider's content filter): sending the
    same request again is refused again, and each refusal is a paid call. ``raw_text`` keeps
    the model's words when it gave any."""

    retryable = False


class ConfigurationError(ValueError):
    """A model string or provider setting is wrong (reported by the system check too). Not
    retried: the same settings fail the same way."""

    retryable = False
