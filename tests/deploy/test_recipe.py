"""The recipe's files agree with each other and with the settings: the Procfile has a worker for
every pool queue, `make prod-local` runs the Procfile rather than its own copy of the commands,
the gunicorn config reads its environment, docs/deploy.md names every process."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from workflows import health
from workflows.management.commands.sluice_procfile import read_procfile

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = read_procfile(ROOT / "Procfile")


def worker_queues() -> dict[str, set[str]]:
    found = {}
    for name, command in PROCFILE.items():
        match = re.search(r"celery -A config worker .*?-Q (\S+)", command)
        if match:
            found[name] = set(match[1].split(","))
    return found


def test_the_procfile_has_release_web_beat_and_a_worker_for_every_pool_queue() -> None:
    assert list(PROCFILE) == ["release", "web", "worker-default", "worker-llm", "beat"]
    assert "migrate" in PROCFILE["release"] and "collectstatic" in PROCFILE["release"]
    assert PROCFILE["web"].startswith("gunicorn --config config/gunicorn.conf.py config.wsgi")
    assert PROCFILE["beat"].startswith("celery -A config beat")
    consumed = worker_queues()
    every = set(health.pool_queues())
    assert every == {"default", "llm"}
    # Each queue has its own worker, and no worker consumes a queue nothing is sent to.
    assert sorted(q for qs in consumed.values() for q in qs) == sorted(every)


def test_a_pool_with_its_own_queue_would_need_a_procfile_line(settings: object) -> None:
    settings.SLUICE_POOLS = {**settings.SLUICE_POOLS, "gpu": {"queue": "gpu"}}  # type: ignore[attr-defined]
    consumed = {q for qs in worker_queues().values() for q in qs}
    missing = set(health.pool_queues()) - consumed
    assert missing == {"gpu"}
    assert health.queue_problems({q: 1 for q in consumed}) == [
        "pool 'gpu' (queue gpu) has no worker: runs that need it will wait forever; "
        "start: celery -A config worker -Q gpu -n gpu@%h"
    ]


def test_make_prod_local_runs_the_procfile_and_repeats_none_of_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^prod-local:.*?(?=^\S|\Z)", makefile, re.M | re.S)
    assert recipe is not None
    body = recipe.group(0)
    assert "manage.py sluice_procfile" in body
    assert "DEBUG=0" in body
    for duplicate in ("gunicorn", "celery", "collectstatic", "migrate"):
        assert duplicate not in body, f"prod-local repeats {duplicate!r}: the Procfile has it"


def test_the_gunicorn_config_reads_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_BIND", "127.0.0.1:9123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_TIMEOUT", "45")
    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert (conf["bind"], conf["workers"], conf["timeout"]) == ("127.0.0.1:9123", 3, 45)
    assert conf["preload_app"] is False and callable(conf["child_exit"])
    monkeypatch.delenv("SLUICE_BIND")
    monkeypatch.setenv("PORT", "8111")
    assert runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))["bind"] == "127.0.0.1:8111"


@pytest.mark.parametrize(("value", "message"), [("0", "1 or more"), ("abc", "not a whole")])
def test_the_gunicorn_config_refuses_a_worker_count_that_serves_nothing(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    """WEB_CONCURRENCY=0 listened and answered nothing, not even /healthz (review finding)."""
    monkeypatch.setenv("WEB_CONCURRENCY", value)
    with pytest.raises(SystemExit, match=message):
        runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert conf["control_socket_disable"] is True  # one instance's stop removed another's


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GUNICORN_TIMEOUT", "30s", "GUNICORN_TIMEOUT='30s' is not a whole number"),
        ("GUNICORN_TIMEOUT", "-1", "GUNICORN_TIMEOUT must be 0 or more"),
        ("GUNICORN_GRACEFUL_TIMEOUT", "20.5", "GUNICORN_GRACEFUL_TIMEOUT='20.5' is not a whole"),
        ("GUNICORN_MAX_REQUESTS", "5k", "GUNICORN_MAX_REQUESTS='5k' is not a whole number"),
    ],
)
def test_the_gunicorn_config_names_a_number_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    """``GUNICORN_TIMEOUT=30s`` stopped gunicorn with a bare ValueError naming nothing."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=re.escape(message)):
        runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))


def test_the_gunicorn_config_keeps_its_defaults_and_takes_zero_where_gunicorn_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT", "GUNICORN_MAX_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert (conf["timeout"], conf["graceful_timeout"], conf["max_requests"]) == (30, 20, 5000)
    monkeypatch.setenv("GUNICORN_TIMEOUT", "0")  # gunicorn: no timeout
    monkeypatch.setenv("GUNICORN_MAX_REQUESTS", " 0 ")  # gunicorn: never recycle
    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert (conf["timeout"], conf["max_requests"], conf["max_requests_jitter"]) == (0, 0, 0)


def process_table() -> dict[str, str]:
    """docs/deploy.md's process table: process name -> the command it shows."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| `([^`]+)` \|", guide, re.M)
    return dict(rows)


def test_the_deploy_guide_shows_the_procfile_commands_as_they_are() -> None:
    """The guide showed ``release`` without the Procfile's ``-v 0``; the workers' and beat's
    rows abbreviate their options (``-c …``, no ``-l``) and must agree up to there."""
    table = process_table()
    assert list(table) == list(PROCFILE)
    assert table["release"] == PROCFILE["release"]
    assert table["web"] == PROCFILE["web"]
    for name in ("worker-default", "worker-llm", "beat"):
        shown = table[name].removesuffix(" …").replace("$SLUICE_VAR_DIR", "${SLUICE_VAR_DIR:-var}")
        assert PROCFILE[name].startswith(shown), (name, shown)


def test_the_deploy_guide_counts_connections_of_threaded_web_workers() -> None:
    """Django's connections are per thread: with gthread workers a web process holds one per
    thread, which the "1 per gunicorn worker process" row and its formula left out."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    section = guide.split("## Database connections")[1].split("**PgBouncer.**")[0]
    assert "gthread" in section and "--threads N" in section
    assert "`W × WEB_CONCURRENCY × N`" in section


def test_the_deploy_guide_says_check_deploy_needs_email_url() -> None:
    """Without EMAIL_URL mail goes to the console, which ``check --deploy`` reports as
    mail.E001 (tests/test_security_settings.py); the settings table did not say so."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    settings_table = guide.split("## Settings")[1].split("## Database connections")[0]
    mail_row = next(
        line for line in settings_table.splitlines() if line.startswith("| `EMAIL_URL`")
    )
    assert "check --deploy" in mail_row and "mail.E001" in mail_row


def test_the_deploy_guide_names_every_process_and_command() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for name, command in PROCFILE.items():
        assert f"`{name}`" in guide, name
        head = command.split(" -c ")[0].split(" -s ")[0].split(" &&")[0]
        assert head in guide, f"docs/deploy.md does not show {head!r}"
    readme = (ROOT / "README.md").read_text()
    assert "## Deploying" in readme and "docs/deploy.md" in readme
