"""Values crossing the journal: JSON (pydantic models allowed), bounded, large ones out of row.

A value over ``SLUICE_PAYLOAD_INLINE_LIMIT`` is stored as a ``Blob`` and its column holds a
reference, ``{"$blob": id, "size": n}``. Only the engine writes references, so only the engine's
own columns are ever read as one, and only under two rules:

1. Every value written to a journal column goes through ``pack`` or ``escape``: a dict that
   merely looks like a reference (or like an escape) is wrapped as ``{"$literal": value}`` and
   reads back as that same dict. Run input, events, gate edits, form fields, a state machine's
   state and an LLM's answer are data, never references.
2. ``unpack`` reads a blob only of the run it is told about (and, for a ``run_workflow`` step,
   of the child run that step started: the hand-over). Anything else is refused with
   ``ForeignBlobError``, never read: blob ids are sequential, so trusting the id alone would hand
   one tenant's documents to another.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pydantic
from django.conf import settings
from django.db.models import Q

from workflows.core.errors import SluiceError

# Re-exported: what a value must be to be stored is part of this module's interface.
from workflows.core.jsonvalues import check_encoded as check_encoded
from workflows.core.jsonvalues import check_size as check_size
from workflows.core.jsonvalues import encode as encode
from workflows.core.jsonvalues import encode_sorted as encode_sorted
from workflows.core.jsonvalues import to_json as to_json
from workflows.core.models import Blob

BLOB_KEY = "$blob"
LITERAL_KEY = "$literal"


class ForeignBlobError(SluiceError, LookupError):
    """A blob reference points at a blob the reader may not read (another run's)."""


def escape(data: Any) -> Any:
    """JSON data as a journal column holds it: a dict with a ``$blob`` or ``$literal`` key is
    wrapped, so that it reads back as data and is never taken for a reference."""
    if isinstance(data, dict) and (BLOB_KEY in data or LITERAL_KEY in data):
        return {LITERAL_KEY: data}
    return data


def pack(value: Any, run_id: Any, what: str = "value") -> tuple[Any, Any | None]:
    """Encode for a JSON column. Returns (column value, Blob to save first or None)."""
    column, blob, _ = pack_text(value, run_id, what)
    return column, blob


def pack_text(value: Any, run_id: Any, what: str = "value") -> tuple[Any, Any | None, str | None]:
    """``pack``, and the column value's JSON text when the column holds the value itself
    (inline, nothing escaped): the writer may send that text rather than encode it again."""
    data = to_json(value, what)
    encoded = encode(data, what)
    column, blob = pack_data(data, check_encoded(data, encoded, what), run_id)
    return column, blob, (encoded if column is data else None)


def pack_data(data: Any, size: int, run_id: Any) -> tuple[Any, Any | None]:
    """``pack`` for plain JSON ``data`` already checked (``size`` from ``check_size``)."""
    if size <= settings.SLUICE_PAYLOAD_INLINE_LIMIT:
        return escape(data), None
    # A blob's text is the value itself: it is never read as a reference, so needs no escape.
    blob = Blob(run_id=run_id, data=json.dumps(data), size=size)
    return None, blob


def blob_ref(blob: Any) -> dict[str, Any]:
    return {BLOB_KEY: blob.pk, "size": blob.size}


def is_blob_ref(data: Any) -> bool:
    """Whether a journal column's value is a reference (only meaningful for values the engine
    stored: everything else was escaped on the way in)."""
    return isinstance(data, dict) and BLOB_KEY in data and len(data) <= 2


def is_literal(data: Any) -> bool:
    return isinstance(data, dict) and len(data) == 1 and LITERAL_KEY in data


def stored(data: Any) -> tuple[Any, int | None]:
    """A journal column's value for display: (the inline value, None) or (None, blob id).

    Reads no blob; whoever shows the link checks the blob belongs to the run it shows.
    """
    if is_literal(data):
        return data[LITERAL_KEY], None
    if is_blob_ref(data):
        ref = data[BLOB_KEY]
        return None, ref if isinstance(ref, int) and not isinstance(ref, bool) else None
    return data, None


def unpack(data: Any, run_id: Any, *, child_step: int | None = None) -> Any:
    """Inverse of ``pack``: the value a journal column holds, following a blob reference.

    A blob is read only if it belongs to run ``run_id`` or, given ``child_step`` (the journal
    row of a ``run_workflow`` call), to the child run that row started: the child's output is
    handed over to the parent as the child's own reference. Any other reference raises
    ``ForeignBlobError`` (a clear failure of the reading step or run, never another run's data).
    """
    if is_literal(data):
        return data[LITERAL_KEY]
    if not is_blob_ref(data):
        return data
    ref = data[BLOB_KEY]
    blob = None
    if isinstance(ref, int) and not isinstance(ref, bool) and 0 < ref < 2**63:
        allowed = Q(run_id=run_id)
        if child_step is not None:
            allowed |= Q(run__parent_step_id=child_step)
        blob = Blob.objects.filter(allowed, pk=ref).only("data").first()
    if blob is None:
        raise ForeignBlobError(
            f"the value refers to stored value {ref!r}, which does not belong to run {run_id}; "
            "it was not read"
        )
    return json.loads(blob.data)


@lru_cache(maxsize=512)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    try:
        return pydantic.TypeAdapter(annotation)
    except Exception:
        return None


def revive(data: Any, annotation: Any) -> Any:
    """Turn journal JSON back into the step's declared return type (a pydantic model, say).

    The first execution and every replay go through here, so a workflow sees the same type of
    value either way.
    """
    if annotation is None or annotation is Any:
        return data
    adapter = _adapter(annotation)
    if adapter is None:
        return data
    try:
        return adapter.validate_python(data)
    except pydantic.ValidationError:
        return data
