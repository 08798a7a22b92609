"""Workflows for the blob reference tests: values from outside echoed back, and a large child
output handed over to its parent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from workflows import step, workflow


@step
def echo(value: Any) -> Any:
    return value


@step
def document(n: int) -> dict[str, Any]:
    return {"text": "secret " * n}


@workflow(name="blobs.document")
def document_wf(ctx: Any, n: int = 200) -> Any:
    """A run whose output is large: stored as a blob of this run."""
    return ctx.run(document, n)


@workflow(name="blobs.echo_event")
def echo_event(ctx: Any) -> Any:
    """Returns the payload of the event "go" as it is."""
    return ctx.wait_for_event("go", timeout=timedelta(hours=1))


@workflow(name="blobs.echo_input")
def echo_input(ctx: Any, doc: dict[str, Any]) -> Any:
    """Passes its input through a step and returns what the step returned."""
    return ctx.run(echo, doc)


@workflow(name="blobs.echo_default")
def echo_default(ctx: Any, default: dict[str, Any]) -> Any:
    """Waits for an event that never comes: the default is returned when the wait times out."""
    return ctx.wait_for_event("never", timeout=timedelta(seconds=1), default=default)


@workflow(name="blobs.parent")
def parent(ctx: Any, n: int = 200) -> Any:
    """A parent that takes its child's large output."""
    child = ctx.run_workflow("blobs.document", {"n": n})
    return {"length": len(child["text"])}


@workflow(name="blobs.fan_out")
def fan_out(ctx: Any, n: int = 200) -> Any:
    """Large branch results come back to the run through its own blobs."""
    docs = ctx.map(document, [n, n])
    return [len(d["text"]) for d in docs]
