"""Text from outside (a pipeline input inside a step's exception, an LLM's answer, a request
path) reached the log as it was: a newline in it started a line that looked exactly like a real
one, and escape sequences reached the terminal of whoever watched the logs. The plain format
escapes a message's control characters; the JSON format the ones ``json.dumps`` leaves raw."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from logging.config import DictConfigurator  # type: ignore[attr-defined]
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tests.support import Bell
from workflows.keys import SCOPES, create_api_key
from workflows.models import Run

FORGED = "2026-12-07 10:00:00,000 INFO workflows.steps: run 00000000 succeeded (all clear)"
HOSTILE = f"Lisbon\n{FORGED}\r\n\x1b[2K\x1b]0;pwned\x07\u2028\x85\x9b2K"


def configured(name: str) -> logging.Formatter:
    """The formatter ``name`` as settings.LOGGING builds it."""
    conf = dict(settings.LOGGING["formatters"][name])
    formatter: logging.Formatter = DictConfigurator(settings.LOGGING).configure_formatter(conf)
    return formatter


@pytest.fixture
def plain_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(configured("plain"))
    logger = logging.getLogger("workflows")
    logger.addHandler(handler)
    yield out
    logger.removeHandler(handler)


def test_a_plain_line_stays_one_line_and_carries_no_escape_sequence() -> None:
    record = logging.LogRecord(
        "workflows.steps", logging.ERROR, __file__, 1, "failed: %s", (HOSTILE,), None
    )
    line = configured("plain").format(record)
    assert line.splitlines() == [line]
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line
    assert "Lisbon\\n2026-12-07" in line and "\\x1b[2K" in line


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "workflows", logging.ERROR, __file__, 1, "x\ny", (), sys.exc_info()
        )
    text = configured("plain").format(record)
    assert text.splitlines()[0].endswith("x\\ny")
    assert "Traceback (most recent call last):" in text.splitlines()[1]


def test_a_json_line_splits_into_one_record_however_it_is_split() -> None:
    record = logging.LogRecord(
        "workflows.steps", logging.ERROR, __file__, 1, "failed: %s", (HOSTILE,), None
    )
    line = configured("json").format(record)
    assert line.splitlines() == [line] and "\x9b" not in line and "\x1b" not in line
    assert json.loads(line)["message"] == f"failed: {HOSTILE}"


@pytest.mark.django_db(transaction=True)
def test_an_api_client_cannot_forge_a_line_through_a_steps_error(
    bell: Bell, plain_log: io.StringIO, settings: Any
) -> None:
    """The reviewer's case: a pipeline input that ends up in the step's exception message."""
    import pipelines.examples.trip_booking  # noqa: F401

    _, raw = create_api_key("svc", scopes=SCOPES, tenant="")
    resp = Client().post(
        "/api/runs",
        data=json.dumps(
            {
                "pipeline": "examples.trip_booking",
                "input": {"destination": HOSTILE, "unavailable": ["flight"]},
            }
        ),
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert resp.status_code in (200, 201, 202), resp.content
    bell.settle()
    assert Run.objects.get().status == "failed"
    text = plain_log.getvalue()
    assert "no flight available for Lisbon\\n" in text  # the step's error was logged, escaped
    assert FORGED not in text.splitlines()
    assert not any(line.startswith(FORGED) for line in text.splitlines())
    assert "\x1b" not in text


@pytest.mark.django_db(transaction=True)
def test_the_apis_error_lines_cannot_be_forged_through_the_path(
    monkeypatch: pytest.MonkeyPatch, plain_log: io.StringIO
) -> None:
    """The API's own 500/503 handlers log the (percent-decoded) request path."""
    _, raw = create_api_key("svc", scopes=SCOPES, tenant="")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("workflows.api.get_visible_run", boom)
    path = "/api/runs/x%0A" + FORGED.replace(" ", "%20") + "/steps"
    client = Client(raise_request_exception=False)
    resp = client.get(path, headers={"Authorization": f"Bearer {raw}"})
    assert resp.status_code == 500
    lines = plain_log.getvalue().splitlines()
    assert any("x\\n2026-12-07" in line for line in lines)  # logged, escaped
    assert not any(line.startswith(FORGED) for line in lines)
