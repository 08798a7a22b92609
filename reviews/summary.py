"""What a queue row says about its run: a subject (the input's title) and a short excerpt.

Every gate of a pipeline has the same title ("Verify thread analysis"), so a queue of them
reads the same row after row. The run's input tells them apart: the field a pipeline names
"Title" (``thread_analysis``: "A name for this analysis, shown to reviewers") or "Subject",
and its main text (a ``textarea`` field such as the thread or the customer's message).

Both are read once, when the gate opens, and stored on the gate (``Gate.subject``,
``Gate.excerpt``), so the queue shows them without loading run inputs of up to 50,000
characters on every refresh. The text is the caller's, untrusted: templates escape it.
"""

from __future__ import annotations

import re
from typing import Any

SUBJECT_KEYS = ("title", "subject", "name", "headline")
SUBJECT_TITLES = ("title", "subject", "name")
ITEM_TITLE_KEYS = ("title", "name", "subject", "id")
SUBJECT_LIMIT = 200
EXCERPT_LIMIT = 280
_SPACE = re.compile(r"\s+")


def _clean(value: str, limit: int) -> str:
    """One line of at most ``limit`` characters, cut with an ellipsis."""
    text = _SPACE.sub(" ", value).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def describe_input(data: Any, schema: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(subject, excerpt)`` of a run's input; "" for what it does not have."""
    if not isinstance(data, dict):
        return "", ""
    props = (schema or {}).get("properties") or {}

    def titled(key: str) -> str:
        return str((props.get(key) or {}).get("title") or "").strip().lower()

    strings = {k: v for k, v in data.items() if isinstance(v, str) and v.strip()}
    subject_key = next((k for k in strings if titled(k) in SUBJECT_TITLES), None) or next(
        (k for k in SUBJECT_KEYS if k in strings), None
    )
    subject = _clean(strings[subject_key], SUBJECT_LIMIT) if subject_key else ""
    rest = {k: v for k, v in strings.items() if k != subject_key}
    # The main text: a field the form shows as a textarea, else the longest other string.
    main = next((k for k in rest if (props.get(k) or {}).get("widget") == "textarea"), None)
    if main is None and rest:
        main = max(rest, key=lambda k: len(rest[k]))
    if main is not None:
        return subject, _clean(rest[main], EXCERPT_LIMIT)
    # No text of its own (document_batch): name the items of its first list.
    for key, value in data.items():
        if isinstance(value, list) and value:
            names = [_item_name(item) for item in value]
            label = str((props.get(key) or {}).get("title") or key).lower()
            listing = ", ".join(n for n in names if n)
            excerpt = f"{len(value)} {label}" + (f": {listing}" if listing else "")
            return subject, _clean(excerpt, EXCERPT_LIMIT)
    return subject, ""


def _item_name(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ITEM_TITLE_KEYS:
            value = item.get(key)
            if isinstance(value, str | int) and str(value).strip():
                return str(value)
    return ""


def describe_run(run: Any) -> tuple[str, str]:
    """``describe_input`` of a run, with its pipeline's input schema when it is registered."""
    from workflows.core.definitions import get_workflow
    from workflows.core.errors import UnknownWorkflowError

    schema: dict[str, Any] | None = None
    try:
        definition = get_workflow(run.workflow)
    except UnknownWorkflowError:
        definition = None  # An unregistered pipeline still gets the plain reading.
    if definition is not None and definition.input_model is not None:
        schema = definition.input_schema()
    return describe_input(run.input, schema)
