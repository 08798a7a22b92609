"""Property-based tests of the whole API from its own OpenAPI schema (schemathesis).

Every operation gets generated requests, valid and invalid, authenticated with a key that has
every scope. Whatever comes in, the API answers with a documented status in the documented
shape, and never with a 5xx.
The schema is read from ``/api/openapi.json`` through the WSGI application, as a client would.

Query parameters get more than the schema alone would generate: every ``date-time`` is drawn
from the edges of the calendar with extreme UTC offsets (9999-12-31 at -14:00 has no UTC
equivalent), and ``cursor`` is drawn from cursors that encode such date-times, cursors of the
wrong shape and plain garbage, besides real ones.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.support import Bell
from workflows import start
from workflows.keys import create_api_key

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "20"))

# Loaded at collection (pytest-django has configured Django by then); serving the schema
# touches no database. (schemathesis's lazy ``from_fixture`` loader does not run on pytest 9.)
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())

# UTC offsets as ISO 8601 allows them, -14:00 … +14:00, by the minute.
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
edges = st.sampled_from(
    [
        datetime(1, 1, 1),
        datetime(1, 1, 1, 13, 59, 59),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(9999, 12, 31, 10, 0),
        datetime(1970, 1, 1),
    ]
)
date_times = st.one_of(
    st.builds(lambda d, tz: d.replace(tzinfo=tz), edges, offsets),
    st.datetimes(timezones=st.none() | st.just(UTC) | offsets),
).map(datetime.isoformat)
schemathesis.openapi.format("date-time", date_times)


def encode_cursor(position: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
cursors = st.one_of(
    st.tuples(date_times, st.uuids().map(str)).map(list).map(encode_cursor),
    st.lists(json_scalars | date_times, max_size=3).map(encode_cursor),
    st.recursive(json_scalars, lambda c: st.lists(c, max_size=3), max_leaves=6).map(encode_cursor),
    st.text(max_size=60),
)


@schema.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> Any:
    """Add extreme date-time filters and hostile cursors to the run list's queries."""
    operation = context.operation
    if operation is None or operation.path != "/api/runs" or operation.method.upper() != "GET":
        return st.just(query)
    extra = st.fixed_dictionaries(
        {}, optional={"cursor": cursors, "created_after": date_times, "created_before": date_times}
    )
    return extra.map(lambda more: {**(query or {}), **more})


@pytest.fixture
def auth(bell: Bell, settings: Any) -> dict[str, str]:
    settings.SLUICE_WEBHOOK_ALLOW_PRIVATE = False
    _, raw = create_api_key(
        "fuzzer", scopes=("runs:read", "runs:write", "gates:decide"), rate_limit=0
    )
    start("test.event", {})  # something to find
    bell.drain()
    return {"Authorization": f"Bearer {raw}"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_no_generated_request_gets_a_server_error(case: Any, auth: dict[str, str]) -> None:
    # Every other built-in check runs: no 5xx, only documented status codes, responses that
    # match their schemas and content types. Two are left out on purpose:
    # - "schema-valid data is accepted" cannot hold when pipeline names, input schemas and
    #   cursors are known only at run time (a random pipeline name is rightly a 422);
    # - "schema-violating data is rejected" trips on HTTP itself: Django reads a repeated
    #   query parameter (?pipeline=a&pipeline=b) as its last value, which is fine.
    case.call_and_validate(
        headers=auth, excluded_checks=[positive_data_acceptance, negative_data_rejection]
    )


@schema.include(path="/api/runs", method="GET").parametrize()
@settings(
    max_examples=MAX_EXAMPLES * 5,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_filter_or_cursor_gets_a_server_error(case: Any, auth: dict[str, str]) -> None:
    # The run list is where date-times and cursors reach SQL: it gets more examples, always
    # with a valid key (generated credentials would stop most requests at the 401).
    case.headers = dict(auth)
    response = case.call()
    assert response.status_code < 500, (case.method, case.query, response.text[:500])
    if case.method.upper() == "GET":
        assert response.status_code in (200, 422), (case.query, response.text[:500])
    if response.status_code == 422:
        assert set(response.json()["error"]) == {"code", "message", "details"}
