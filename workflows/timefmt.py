"""Datetimes written into JSON by hand, in the format the JSON API answers with.

The API's responses are rendered by django-ninja's ``NinjaJSONEncoder`` (Django's
``DjangoJSONEncoder`` for datetimes): ISO 8601 in UTC, to the millisecond, with ``Z``:
``2026-12-07T13:22:01.732Z`` (a whole second has no fraction: ``2026-12-07T13:22:01Z``). A body
built as a dict and dumped elsewhere (a completion webhook, a dataset line, an error's details)
uses :func:`api_datetime`, so that a service reads every timestamp Sluice sends it one way.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ninja.responses import NinjaJSONEncoder

_encoder = NinjaJSONEncoder()


def api_datetime(value: datetime | None) -> str | None:
    """``value`` as the API writes it, or None. An aware value is shown in UTC."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    text: str = _encoder.default(value)
    return text
