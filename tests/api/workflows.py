"""Workflows the API and operator tests start (imported by the tests and real workers)."""

from __future__ import annotations

from typing import Any

from workflows import workflow


@workflow(name="api.review", version=1)
def reviewed(ctx: Any, text: str = "All good.") -> dict[str, Any]:
    """Ask a person to check a text, then return their verdict."""
    decision = ctx.review(
        title="Check the summary",
        instruction="Is this summary right?",
        payload={"summary": text},
        choices=("approve", "reject"),
    )
    return {"outcome": decision.outcome, "comment": decision.comment}
