"""What the built-in pipelines share: the retry policy and step decorator of LLM steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.llm import LLMTask, config
from workflows import RetryPolicy, step

# Provider hiccups (429, 5xx, timeouts, malformed answers) usually pass within a minute; a
# Retry-After from the provider wins over this backoff. Four attempts keep a bad prompt from
# burning money for long.
LLM_RETRY = RetryPolicy(max_attempts=4, initial_backoff=2.0, max_backoff=60.0, jitter=True)


def llm_step(task: LLMTask[Any], *, retry: RetryPolicy = LLM_RETRY) -> Callable[..., Any]:
    """``@step`` for a step that calls ``task``: its provider's pool, the LLM retry policy and
    a timeout just above the HTTP client's."""
    return step(pool=task.pool, retry=retry, timeout=config.step_timeout())  # type: ignore[no-any-return]
