"""Calling a real model through pydantic-ai, and turning its failures into engine-shaped errors.

The engine owns retrying (backoff, attempt budget, journal), so every retry below it is off:
the SDK clients are built with ``max_retries=0`` and the agent with ``retries=0`` (an answer
that fails validation is not sent back to the model for another try here; it fails the attempt,
and the journal keeps the raw text). ``translate`` decides what is retryable:

- timeouts, 429 (with ``Retry-After``), 5xx, connection errors and malformed answers: retryable;
- 400, 401/403, 404, 422 and exhausted quota: not (``retryable = False``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import pydantic
from django.conf import settings
from pydantic_ai import Agent, NativeOutput, PromptedOutput, capture_run_messages
from pydantic_ai import exceptions as pe
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, RetryPromptPart

from pipelines.llm import config
from pipelines.llm.config import ModelSpec
from pipelines.llm.errors import (
    AnswerRefused,
    MalformedAnswer,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
)
from workflows.coroutines import run_coroutine

RAW_TEXT_LIMIT = 4000


@dataclass
class Answer:
    """A validated answer and what it used."""

    output: Any
    input_tokens: int
    output_tokens: int


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


def ask[T: pydantic.BaseModel](
    spec: ModelSpec, *, instructions: str, prompt: str, output_type: type[T]
) -> Answer:
    """Ask ``spec`` for an ``output_type``; raise a ``ProviderError`` on any failure.

    On a failure the tokens the provider reported so far are on the exception (``usage``), so
    a failed attempt that consumed tokens is still journaled with its cost.
    """
    return run_coroutine(
        lambda: _ask(spec, instructions, prompt, output_type), thread_name="sluice-llm-call"
    )


async def _ask[T: pydantic.BaseModel](
    spec: ModelSpec, instructions: str, prompt: str, output_type: type[T]
) -> Answer:
    client, model = _model(spec)
    try:
        agent: Agent[None, Any] = Agent(
            model,
            output_type=_output_spec(output_type),
            instructions=instructions,
            retries=0,
        )
        with capture_run_messages() as messages:
            try:
                # SLUICE_LLM_TIMEOUT bounds the whole request: the HTTP client's own timeout
                # is per read, and a server sending a byte now and then never trips it.
                result = await asyncio.wait_for(agent.run(prompt), config.timeout())
            except Exception as exc:
                error = translate(exc, spec, messages, output_type)
                if error is None:
                    raise
                error.usage = usage_of(messages)  # type: ignore[attr-defined]
                # Not chained: the journal keeps the error's traceback, and the SDK's own
                # exception may quote the request (its headers, the key a provider echoed).
                raise _scrubbed(error, spec) from None
        usage = result.usage
        return Answer(result.output, usage.input_tokens or 0, usage.output_tokens or 0)
    finally:
        await client.close()


def _model(spec: ModelSpec) -> tuple[Any, Any]:
    """A fresh SDK client and pydantic-ai model for one call.

    Async HTTP clients belong to the event loop they were made on, and each call runs its own
    loop (steps are synchronous), so nothing is cached across calls.
    """
    timeout = config.timeout()
    if spec.provider == "anthropic":
        from anthropic import AsyncAnthropic
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        a_client = AsyncAnthropic(
            api_key=spec.api_key or "missing",
            base_url=spec.base_url or None,
            max_retries=0,
            timeout=timeout,
        )
        return a_client, AnthropicModel(
            spec.model, provider=AnthropicProvider(anthropic_client=a_client)
        )
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    o_client = AsyncOpenAI(
        api_key=spec.api_key or "missing",
        base_url=spec.base_url or None,
        max_retries=0,
        timeout=timeout,
    )
    return o_client, OpenAIChatModel(spec.model, provider=OpenAIProvider(openai_client=o_client))


def _output_spec[T: pydantic.BaseModel](output_type: type[T]) -> Any:
    """Tool calls by default (the widest support); ``native`` uses the provider's JSON-schema
    mode and ``prompted`` asks for JSON in the prompt (for servers without either)."""
    mode = getattr(settings, "SLUICE_LLM_OUTPUT_MODE", "tool")
    if mode == "native":
        return NativeOutput(output_type)
    if mode == "prompted":
        return PromptedOutput(output_type)
    return output_type


# --- errors ----------------------------------------------------------------------------------


def translate(
    exc: BaseException, spec: ModelSpec, messages: list[ModelMessage], output_type: type[Any]
) -> ProviderError | None:
    """The engine-shaped error for a pydantic-ai failure, or None to let ``exc`` through."""
    who: dict[str, Any] = {"provider": spec.provider, "model": spec.model}
    status = getattr(exc, "status_code", None)
    prefix = f"{spec.name}: "
    if isinstance(exc, pe.ModelRateLimitError) or status == 429:
        wait = getattr(exc, "retry_after", None)
        hint = f"; the provider asked to retry after {wait:g}s" if wait else ""
        return RateLimited(
            f"{prefix}rate limited (HTTP 429){hint}", status=429, retry_after=wait, **who
        )
    if isinstance(exc, pe.ModelQuotaExceededError):
        return RequestRejected(f"{prefix}quota or billing exhausted: {exc}", status=status, **who)
    if isinstance(exc, pe.ModelRequestRejectedError):
        kind = (
            "credentials rejected"
            if isinstance(exc, pe.ModelAuthenticationError)
            else "request rejected"
        )
        return RequestRejected(
            f"{prefix}{kind} (HTTP {status or '4xx'}); "
            "not retried: the same request cannot succeed",
            status=status,
            **who,
        )
    if isinstance(exc, pe.ModelTimeoutError | pe.ModelRequestTimeout | TimeoutError):
        return ProviderTimeout(f"{prefix}no answer within {config.timeout():g}s", **who)
    # A 503's Retry-After is honoured as a 429's is.
    later = getattr(exc, "retry_after", None)
    if isinstance(exc, pe.ModelConnectionError | pe.ModelServerError | pe.ModelUnavailableError):
        what = f"HTTP {status}" if status else type(exc).__name__
        return ProviderUnavailable(
            f"{prefix}provider unavailable ({what}): {_short(exc)}",
            status=status,
            retry_after=later,
            **who,
        )
    if isinstance(exc, pe.ModelHTTPError):
        if status is not None and (status >= 500 or status in (408, 409, 425)):
            return ProviderUnavailable(
                f"{prefix}HTTP {status}: {_short(exc)}", status=status, retry_after=later, **who
            )
        return RequestRejected(f"{prefix}HTTP {status}: {_short(exc)}", status=status, **who)
    if isinstance(exc, pe.ModelAPIError):
        # A response that could not be decoded (not JSON, cut off): keep what arrived.
        return MalformedAnswer(
            f"{prefix}malformed response: {_short(exc)}", raw_text=_raw_from_cause(exc), **who
        )
    if isinstance(
        exc, IndexError | KeyError | TypeError | AttributeError | ValueError | RecursionError
    ) and _raised_by_sdk(exc):
        # The SDK could not read the answer's shape (``"choices": []``, ``"content": null``,
        # a body of ``[]``, a negative token count), or the JSON reader it called could not
        # read the body (an integer past 4,300 digits, nesting deeper than the stack): retried
        # as any unreadable answer is.
        return MalformedAnswer(
            f"{prefix}malformed response: {type(exc).__name__}: {_short(exc)}",
            raw_text=_raw_answer(messages) or _raw_from_cause(exc),
            **who,
        )
    if isinstance(exc, pe.ContentFilterError):
        # A refusal is an answer, not a malformed one: asked again, the model declines again,
        # and every attempt is paid for.
        said = exc.message.removeprefix("Content filter triggered.").strip()
        return AnswerRefused(
            f"{prefix}the model refused to answer"
            + (f" ({said.splitlines()[0][:300]})" if said else "")
            + "; not retried: the same request is refused again",
            raw_text=_refusal_text(exc, messages),
            **who,
        )
    if isinstance(exc, pe.OutputTokenLimitExceeded):
        return RequestRejected(
            f"{prefix}the answer reached the model's output token limit before it was complete;"
            " not retried: the same request stops at the same limit (raise the model's "
            "max_tokens, or ask for less)",
            raw_text=_raw_answer(messages),
            **who,
        )
    if isinstance(exc, pe.UnexpectedModelBehavior):
        detail = _validation_detail(exc, messages)
        # pydantic-ai validates the reply's envelope (its usage counts, its choices) before it
        # reads the answer; that failure is the provider's, not the answer's shape.
        what = (
            "malformed response"
            if str(exc).startswith("Invalid response from")
            else f"the answer does not match {output_type.__name__}"
        )
        return MalformedAnswer(
            f"{prefix}{what}" + (f": {detail}" if detail else f" ({_short(exc)})"),
            raw_text=_raw_answer(messages) or getattr(exc, "body", None),
            **who,
        )
    return None


# Where an SDK reads a provider's answer. A built-in error raised in there is the answer's
# shape; raised anywhere else (an output model's own validator, say) it is a bug of ours, which
# must not be retried as a paid call. (The openai SDK reads its responses with ``httpx2``.)
_SDK_MODULES = ("openai", "anthropic", "pydantic_ai", "httpx", "httpx2", "genai_prices")


def _raised_by_sdk(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback outside the standard library is an
    SDK's: an error raised in ``json`` (the body's reading) belongs to whoever called it."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(str(tb.tb_frame.f_globals.get("__name__", "")).split(".", 1)[0])
        tb = tb.tb_next
    for module in reversed(frames):
        if module not in sys.stdlib_module_names:
            return module in _SDK_MODULES
    return False


def usage_of(messages: list[ModelMessage]) -> Usage:
    total = Usage()
    for message in messages:
        if isinstance(message, ModelResponse):
            total.input_tokens += message.usage.input_tokens or 0
            total.output_tokens += message.usage.output_tokens or 0
    return total


def _raw_answer(messages: list[ModelMessage]) -> str | None:
    """The text of the model's last answer: tool-call arguments or plain text."""
    for message in reversed(messages):
        if not isinstance(message, ModelResponse):
            continue
        chunks = []
        for part in message.parts:
            args = getattr(part, "args", None)
            content = getattr(part, "content", None)
            if args is not None:
                chunks.append(args if isinstance(args, str) else json.dumps(args))
            elif isinstance(content, str):
                chunks.append(content)
        if chunks:
            return "\n".join(chunks)[:RAW_TEXT_LIMIT]
    return None


def _refusal_text(exc: BaseException, messages: list[ModelMessage]) -> str | None:
    """The model's own words when it declined (OpenAI's ``refusal``), else its last text."""
    for message in reversed(messages):
        if isinstance(message, ModelResponse):
            said = (message.provider_details or {}).get("refusal")
            if isinstance(said, str) and said:
                return said[:RAW_TEXT_LIMIT]
    return _raw_answer(messages)


def _validation_detail(exc: BaseException, messages: list[ModelMessage]) -> str:
    """What pydantic said about the answer: the validation error behind the failure, or the
    retry prompt pydantic-ai would have sent back to the model."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, pydantic.ValidationError):
            return "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or '(answer)'}: {e['msg']}"
                for e in seen.errors(include_url=False)
            )[:500]
        seen = seen.__cause__ or seen.__context__
    for message in reversed(messages):
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if isinstance(part, RetryPromptPart):
                return part.model_response()[:500]
    return ""


def _raw_from_cause(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        doc = getattr(seen, "doc", None)
        if isinstance(doc, str):
            return doc[:RAW_TEXT_LIMIT]
        body = getattr(seen, "body", None)
        if isinstance(body, str) and body:
            return body[:RAW_TEXT_LIMIT]
        seen = seen.__cause__ or seen.__context__
    return None


def _scrubbed(error: ProviderError, spec: ModelSpec) -> ProviderError:
    """``error`` with the model's API key masked in its message and raw text: a provider may
    echo the key in an error body, and both are journaled and shown on the run's page."""
    key = spec.api_key or ""
    if len(key) < 8:  # "missing", or nothing worth masking
        return error
    error.args = tuple(
        arg.replace(key, "***") if isinstance(arg, str) else arg for arg in error.args
    )
    if error.raw_text:
        error.raw_text = error.raw_text.replace(key, "***")
    return error


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
