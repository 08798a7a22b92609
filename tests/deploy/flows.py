"""The workflow the production-recipe test pushes through the Procfile's processes.

An inline step (default pool, run by the worker of the ``default`` queue), a map of LLM-pool
steps (branches, run by the worker of the ``llm`` queue) that record tokens and cost and log a
line, an optional slow step (to stop the processes while it runs), then a review gate.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from workflows import record_usage, step, workflow

log = logging.getLogger("workflows.deploy_test")


@step
def prepare(text: str) -> str:
    return text.strip().lower()


@step(pool="llm")
def analyse(part: str) -> dict[str, Any]:
    log.info("analysing %s", part)
    record_usage(cost=0.0015, provider="fake", model="m1", input_tokens=10, output_tokens=4)
    return {"part": part, "words": len(part.split("-"))}


@step
def linger(seconds: float) -> float:
    log.info("lingering %s s", seconds)
    time.sleep(seconds)
    return seconds


@workflow(name="deploy.gated", version=1)
def gated(ctx: Any, text: str, parts: int = 2, slow: float = 0.0) -> dict[str, Any]:
    prepared = ctx.run(prepare, text)
    results = ctx.map(analyse, [f"{prepared}-{i}" for i in range(parts)])
    if slow:
        ctx.run(linger, slow)
    decision = ctx.review(
        title=f"Check {prepared}",
        instruction="Approve the analysis.",
        payload={"results": results},
        timeout=timedelta(hours=1),
        on_timeout="approve",
        group="reviewers",
    )
    return {"outcome": decision.outcome, "results": results}
