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
import re
from functools import lru_cache
from typing import Any

import pydantic
import pydantic_core
from django.conf import settings
from django.db.models import Q

from workflows.core.errors import PayloadTooLargeError, SluiceError
from workflows.core.models import Blob

BLOB_KEY = "$blob"
LITERAL_KEY = "$literal"
# A NUL as json.dumps escapes it: "\u0000" after an even number of backslashes. Text that
# merely shows the six characters \u0000 is encoded "\\u0000", which is storable.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class ForeignBlobError(SluiceError, LookupError):
    """A blob reference points at a blob the reader may not read (another run's)."""


def to_json(value: Any, what: str = "value") -> Any:
    """Return ``value`` as plain JSON data, or raise ``TypeError`` naming what is wrong (not
    serializable, nested too deeply, or containing itself)."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None
    except (ValueError, RecursionError) as exc:
        # pydantic_core raises a plain ValueError for nesting deeper than it serializes
        # ("Maximum serialization depth exceeded") and for a value that contains itself:
        # the caller's input is at fault, and callers turn TypeError into an input error.
        raise TypeError(f"{what} cannot be stored as JSON: {exc}") from None


def check_size(data: Any, what: str = "value") -> int:
    return check_encoded(data, encode(data, what), what)


def encode(data: Any, what: str = "value") -> str:
    """``data`` (plain JSON) as compact JSON text."""
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:
        # NaN and Infinity are not JSON: PostgreSQL's jsonb refuses them, so refuse them here.
        raise TypeError(f"{what} contains NaN or Infinity, which is not JSON") from None


def encode_sorted(data: Any, what: str = "value") -> str:
    """``data`` (plain JSON) as canonical JSON text: sorted keys, no spaces. The same text
    serves a call's digest and ``check_encoded``: a key's order changes neither a size nor
    what characters the text holds."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise TypeError(f"{what} contains NaN or Infinity, which is not JSON") from None


def check_encoded(data: Any, encoded: str, what: str = "value") -> int:
    """The checks of ``check_size`` on ``data`` already encoded (compactly) as ``encoded``."""
    if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
        # PostgreSQL's jsonb cannot store NUL; refuse it here, as a clear step failure,
        # rather than as a database error in the middle of a checkpoint.
        raise TypeError(f"{what} contains a NUL character (\\u0000), which cannot be stored")
    if "\\ud" in encoded:
        # Characters outside the BMP are escaped as surrogate pairs; a lone surrogate is not
        # Unicode, and jsonb refuses it ("Unicode low surrogate must follow a high surrogate").
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(
                f"{what} contains a lone surrogate (not valid Unicode), which cannot be stored"
            ) from None
    size = len(encoded)
    limit = settings.SLUICE_PAYLOAD_HARD_LIMIT
    if size > limit:
        raise PayloadTooLargeError(
            f"{what} is {size:,} bytes of JSON, over the hard limit of {limit:,} bytes "
            "(SLUICE_PAYLOAD_HARD_LIMIT); store large data elsewhere and pass a reference"
        )
    return size


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
