"""E-mail from the environment: ``EMAIL_URL`` (django-environ's email_url) becomes Django 6.1's
``MAILERS["default"]``. Each case reads the settings in a subprocess with a clean environment,
since settings are read once, at import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_security_settings import manage

pytestmark = [pytest.mark.core]

SHOW = (
    "from django.conf import settings; import json; "
    "print(json.dumps({'mailers': settings.MAILERS, 'from': settings.DEFAULT_FROM_EMAIL}))"
)


def mail_settings(tmp_path: Path, **env: str) -> dict[str, Any]:
    done = manage(tmp_path, env, "shell", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "url, backend, options",
    [
        (None, "console", {}),  # make run: printed by the worker
        ("consolemail://", "console", {}),
        ("memorymail://", "locmem", {}),
        ("dummymail://", "dummy", {}),
        (
            "smtp+tls://alerts%40example.com:s%2Fcret@mail.example.com:587",
            "smtp",
            {
                "host": "mail.example.com",
                "port": 587,
                "username": "alerts@example.com",
                "password": "s/cret",
                "use_tls": True,
                "timeout": 10.0,
            },
        ),
        (
            "smtp+ssl://mail.example.com:465",
            "smtp",
            {"host": "mail.example.com", "port": 465, "use_ssl": True, "timeout": 10.0},
        ),
    ],
)
def test_email_url_configures_the_default_mailer(
    tmp_path: Path, url: str | None, backend: str, options: dict[str, Any]
) -> None:
    env = {"EMAIL_URL": url} if url is not None else {}
    got = mail_settings(tmp_path, **env)
    default = got["mailers"]["default"]
    if backend == "smtp":  # Django's, with a deadline on the whole attempt
        assert default["BACKEND"] == "workflows.mail.SMTPBackend"
    else:
        assert default["BACKEND"] == f"django.core.mail.backends.{backend}.EmailBackend"
    assert default["OPTIONS"] == options
    assert got["from"] == "Sluice <sluice@localhost>"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize(
    "env",
    [
        {"EMAIL_URL": "garbage"},
        {"EMAIL_URL": "smtp+tls://alerts:Hunter2secret@mail.example.com:notaport"},
    ],
)
def test_a_bad_email_url_is_a_clear_startup_error_without_its_password(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """Review finding: a port that is not a number was a bare ValueError from urllib, and an
    unknown scheme said "Invalid email schema" without naming the variable."""
    done = manage(tmp_path, env, "check")
    assert done.returncode != 0
    assert last_line(done.stderr).startswith(
        "django.core.exceptions.ImproperlyConfigured: EMAIL_URL"
    )
    assert "Hunter2secret" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "env, name",
    [
        ({"SLUICE_REVIEW_REMINDER_AT": "75"}, "SLUICE_REVIEW_REMINDER_AT"),
        ({"SLUICE_GATE_TRAIL_ON_PRUNE": "kepp"}, "SLUICE_GATE_TRAIL_ON_PRUNE"),
    ],
)
def test_out_of_range_notification_and_retention_settings_stop_the_start(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    """Review finding: 75 (meant as 75 %) silently turned reminders off, and a typo in the
    trail mode was only noticed by the first prune, an hour after the start."""
    done = manage(tmp_path, env, "check")
    assert done.returncode != 0
    assert last_line(done.stderr).startswith(f"django.core.exceptions.ImproperlyConfigured: {name}")


def test_the_trail_mode_ignores_case_and_spaces(tmp_path: Path) -> None:
    show = "from django.conf import settings; print(settings.SLUICE_GATE_TRAIL_ON_PRUNE)"
    done = manage(tmp_path, {"SLUICE_GATE_TRAIL_ON_PRUNE": " Archive "}, "shell", "-c", show)
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == "archive"
