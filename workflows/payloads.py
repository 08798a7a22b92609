"""Values crossing the journal: JSON (pydantic models allowed), bounded, large ones out of row."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import pydantic
import pydantic_core
from django.conf import settings

from workflows.errors import PayloadTooLargeError

BLOB_KEY = "$blob"
# A NUL as json.dumps escapes it: "\u0000" after an even number of backslashes. Text that
# merely shows the six characters \u0000 is encoded "\\u0000", which is storable.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def to_json(value: Any, what: str = "value") -> Any:
    """Return ``value`` as plain JSON data, or raise ``TypeError`` naming what is wrong."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None


def check_size(data: Any, what: str = "value") -> int:
    encoded = json.dumps(data, separators=(",", ":"))
    if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
        # PostgreSQL's jsonb cannot store NUL; refuse it here, as a clear step failure,
        # rather than as a database error in the middle of a checkpoint.
        raise TypeError(f"{what} contains a NUL character (\\u0000), which cannot be stored")
    size = len(encoded)
    limit = settings.SLUICE_PAYLOAD_HARD_LIMIT
    if size > limit:
        raise PayloadTooLargeError(
            f"{what} is {size:,} bytes of JSON, over the hard limit of {limit:,} bytes "
            "(SLUICE_PAYLOAD_HARD_LIMIT); store large data elsewhere and pass a reference"
        )
    return size


def pack(value: Any, run_id: Any, what: str = "value") -> tuple[Any, Any | None]:
    """Encode for a JSON column. Returns (column value, Blob to save first or None)."""
    data = to_json(value, what)
    size = check_size(data, what)
    if size <= settings.SLUICE_PAYLOAD_INLINE_LIMIT:
        return data, None
    from workflows.models import Blob

    blob = Blob(run_id=run_id, data=json.dumps(data), size=size)
    return None, blob


def blob_ref(blob: Any) -> dict[str, Any]:
    return {BLOB_KEY: blob.pk, "size": blob.size}


def is_blob_ref(data: Any) -> bool:
    return isinstance(data, dict) and BLOB_KEY in data and len(data) <= 2


def unpack(data: Any) -> Any:
    """Inverse of ``pack``: follow a blob reference when there is one."""
    if is_blob_ref(data):
        from workflows.models import Blob

        return json.loads(Blob.objects.get(pk=data[BLOB_KEY]).data)
    return data


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
