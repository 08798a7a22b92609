"""Running a coroutine from synchronous code: a worker's task, a step, an outbox handler.

Shared by the webhook deliveries (``workflows.webhooks``) and the LLM calls
(``pipelines.llm.providers``), both of which need an overall deadline that only an event loop
gives them (``asyncio.wait_for``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any


def run_coroutine[R](
    factory: Callable[[], Awaitable[R]], *, thread_name: str = "sluice-async"
) -> R:
    """Run ``factory()`` to completion. In this thread when it has no event loop running (a
    worker's main thread, a step); where one is already running (a test driving a browser,
    say), in a thread of its own, whose result or error comes back here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(factory))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_awaited(factory))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=thread_name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


async def _awaited[R](factory: Callable[[], Awaitable[R]]) -> R:
    return await factory()
