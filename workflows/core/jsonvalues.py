"""Values as the journal stores them: plain JSON that PostgreSQL's jsonb accepts, within the
hard limit. No models here, so that what is imported before the apps are ready (``usage``) can
check a value too; ``payloads`` builds the journal's columns on these."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pydantic_core
from django.conf import settings

from workflows.core.errors import PayloadTooLargeError

# A NUL as json.dumps escapes it: "\u0000" after an even number of backslashes. Text that
# merely shows the six characters \u0000 is encoded "\\u0000", which is storable.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


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
    except ValueError as exc:
        # NaN and Infinity are not JSON: PostgreSQL's jsonb refuses them, so refuse them here.
        raise TypeError(_unencodable(what, exc)) from None


def encode_sorted(data: Any, what: str = "value") -> str:
    """``data`` (plain JSON) as canonical JSON text: sorted keys, no spaces. The same text
    serves a call's digest and ``check_encoded``: a key's order changes neither a size nor
    what characters the text holds."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise TypeError(_unencodable(what, exc)) from None


def _unencodable(what: str, exc: ValueError) -> str:
    """Why ``json.dumps`` refused a value: NaN or Infinity, or an integer longer than Python
    converts to text (``sys.set_int_max_str_digits``, 4,300 digits by default)."""
    if "digits" in str(exc):
        return f"{what} contains an integer too long to write as JSON (over 4,300 digits)"
    return f"{what} contains NaN or Infinity, which is not JSON"


def check_text(data: Any, encoded: str, what: str = "value") -> None:
    """Refuse (``TypeError``) the text no database stores in ``data``, already encoded
    (compactly) as ``encoded``: a NUL character, or a lone surrogate (not Unicode)."""
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


def check_encoded(data: Any, encoded: str, what: str = "value") -> int:
    """The checks of ``check_size`` on ``data`` already encoded (compactly) as ``encoded``."""
    check_text(data, encoded, what)
    size = len(encoded)
    limit = settings.SLUICE_PAYLOAD_HARD_LIMIT
    if size > limit:
        raise PayloadTooLargeError(
            f"{what} is {size:,} bytes of JSON, over the hard limit of {limit:,} bytes "
            "(SLUICE_PAYLOAD_HARD_LIMIT); store large data elsewhere and pass a reference"
        )
    return size


def same_json(a: Any, b: Any) -> bool:
    """JSON equality as a database sees it: numbers by value, so that ``1e23`` (a float) is the
    ``100000000000000000000000`` PostgreSQL's jsonb hands back for it; True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        try:
            return Decimal(repr(a)) == Decimal(repr(b))
        except (ArithmeticError, ValueError):
            return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
