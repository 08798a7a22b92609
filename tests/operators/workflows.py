"""Pipelines the operator tests and screenshots run (imported by tests and real workers)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from workflows import RetryPolicy, record_usage, step, workflow

ATTEMPTS: dict[str, int] = {}
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01, jitter=False)


@step(retry=FAST_RETRY)
def fetch_document(url: str) -> str:
    """Fetch a document: ``flaky`` URLs fail once, ``down`` URLs always."""
    ATTEMPTS[url] = ATTEMPTS.get(url, 0) + 1
    if "down" in url:
        raise ConnectionError(f"GET {url}: upstream timed out after 30 s")
    if "flaky" in url and ATTEMPTS[url] == 1:
        raise ConnectionError(f"GET {url}: connection reset by peer")
    return f"Text of {url.rsplit('/', 1)[-1]}: the supplier renews automatically each year."


@step(pool="llm", retry=FAST_RETRY)
def summarize(text: str) -> str:
    record_usage(
        cost=0.0042,
        input_tokens=1850,
        output_tokens=240,
        provider="openai",
        model="gpt-4o-mini",
        latency_ms=6400,
    )
    return "The contract auto-renews yearly; notice is due 90 days ahead."


@step(pool="llm")
def classify(texts: list[str]) -> dict[str, Any]:
    record_usage(
        cost=0.0011,
        input_tokens=900,
        output_tokens=35,
        provider="openai",
        model="gpt-4o-mini",
        latency_ms=2100,
    )
    return {"label": "supplier contract", "confidence": 0.91, "documents": len(texts)}


@step
def compose_report(summary: str, label: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "category": label["label"], "confidence": label["confidence"]}


@workflow(name="docs.analyze", version=2)
def analyze(ctx: Any, urls: list[str], sign_off: bool = True) -> dict[str, Any]:
    """Fetch documents, summarize and classify them with an LLM, then wait for sign-off."""
    texts = ctx.map(fetch_document, urls)
    summary, label = ctx.parallel(
        [ctx.call(summarize, "\n".join(texts)), ctx.call(classify, texts)]
    )
    report = ctx.run(compose_report, summary, label)
    signed = None
    if sign_off:
        signed = ctx.wait_for_event("signed_off", timeout=timedelta(hours=8), default=None)
    return {"report": report, "signed_off": signed}


@workflow(name="contracts.review", version=1)
def contract_review(ctx: Any, url: str) -> dict[str, Any]:
    """Summarize a contract and ask legal to approve the summary."""
    text = ctx.run(fetch_document, url)
    summary = ctx.run(summarize, text)
    decision = ctx.review(
        title="Approve the contract summary",
        payload={"summary": summary},
        instruction="Check the summary against the contract.",
        choices=("approve", "reject"),
    )
    return {"summary": summary, "outcome": decision.outcome}
