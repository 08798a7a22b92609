"""JSON logs (SLUICE_LOG_FORMAT=json): one object per line, each engine line naming its run,
generation and step (tests/deploy/test_prod_local.py reads them from real worker processes)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import ROOT
from tests.support import Bell
from workflows import start, step, workflow
from workflows.logs import EngineContextFilter, JsonFormatter

pytestmark = [pytest.mark.django_db(transaction=True)]

log = logging.getLogger("workflows.deploy_logs")


@step
def shout(word: str) -> str:
    log.warning("shouting %s", word)
    return word.upper()


@workflow(name="deploy.logs", version=1)
def shouting(ctx: Any, word: str) -> dict[str, Any]:
    first = ctx.run(shout, word)
    many = ctx.map(shout, [f"{word}-a", f"{word}-b"])
    return {"first": first, "many": many}


def broken_hook(run: Any) -> None:
    raise RuntimeError("the hook is broken")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The ``workflows`` loggers' lines, formatted as SLUICE_LOG_FORMAT=json formats them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(EngineContextFilter())
    logger = logging.getLogger("workflows")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_engine_line_names_its_run_generation_and_step(
    bell: Bell, json_log: io.StringIO
) -> None:
    logging.getLogger("workflows.deploy_logs").warning("before any run")
    run = start("deploy.logs", {"word": "hey"}, on_complete="tests.deploy.test_logs.broken_hook")
    bell.drain()
    entries = lines(json_log)
    assert entries[0]["message"] == "before any run"
    assert entries[0]["run_id"] is None and entries[0]["step"] is None

    shouts = [e for e in entries if e["message"].startswith("shouting")]
    # The inline step, then the two branches (executed as queued steps).
    assert sorted(e["message"] for e in shouts) == [
        "shouting hey",
        "shouting hey-a",
        "shouting hey-b",
    ]
    for e in shouts:
        assert (e["run_id"], e["generation"], e["step"]) == (str(run.id), 1, "shout")
        assert isinstance(e["step_id"], int)
        assert e["level"] == "WARNING" and e["logger"] == "workflows.deploy_logs"
    assert len({e["step_id"] for e in shouts}) == 3

    # The engine's own line (the on_complete hook failed) names the run, outside any step.
    [hook] = [e for e in entries if e["message"].startswith("on_complete")]
    assert hook["run_id"] == str(run.id) and hook["generation"] == 1 and hook["step"] is None
    assert "RuntimeError: the hook is broken" in hook["exc"]
    # Nothing leaks from one run's context into the next line outside it.
    logging.getLogger("workflows.deploy_logs").warning("after the run")
    assert lines(json_log)[-1]["run_id"] is None


def settings_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_LOG")}
    return {**env, "DJANGO_SETTINGS_MODULE": "config.settings", **extra}


SCRIPT = """
import logging, django
django.setup()
from workflows.core import instrument
with instrument.run_scope("r-1", 4), instrument.step_scope("fetch", 9):
    logging.getLogger("workflows.executor").warning("inside %s", "a step")
"""


def run_script(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a new Python with the project's settings and ``env``."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=settings_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sluice_log_format_json_makes_the_settings_write_json_lines() -> None:
    done = run_script(SCRIPT, SLUICE_LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.strip().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "inside a step"
    assert (entry["run_id"], entry["generation"], entry["step"], entry["step_id"]) == (
        "r-1",
        4,
        "fetch",
        9,
    )

    wrong = run_script(SCRIPT, SLUICE_LOG_FORMAT="xml")
    assert wrong.returncode != 0 and "SLUICE_LOG_FORMAT must be 'plain' or 'json'" in wrong.stderr


ERROR_SCRIPT = """
import django
django.setup()
from django.test import Client
from django.urls import path
from django.conf import settings

def broken(request):
    raise RuntimeError("the page broke")

import config.urls
config.urls.urlpatterns.insert(0, path("broken/", broken))
print(Client(raise_request_exception=False).get("/broken/").status_code)
"""


def test_a_server_error_is_logged_with_its_traceback() -> None:
    """With DEBUG off Django only mails a 500 to ADMINS (none are set): the log had just the
    access line (review finding)."""
    done = run_script(ERROR_SCRIPT, SLUICE_HTTPS="0")
    assert done.stdout.strip() == "500", done.stderr
    assert "RuntimeError: the page broke" in done.stderr and "django.request" in done.stderr
