"""on_complete hooks for tests/workflows/test_transactions.py (imported by dotted path)."""

from __future__ import annotations

from typing import Any

from tests import sample_workflows as samples
from workflows import start


def start_follow_up(run: Any) -> None:
    start(samples.chain, {"n": 1}, idempotency_key=f"follow-up-{run.pk}")


def start_follow_up_then_fail(run: Any) -> None:
    start(samples.chain, {"n": 1}, idempotency_key=f"follow-up-{run.pk}")
    raise RuntimeError("the hook failed after starting a run")
