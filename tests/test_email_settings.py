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
    assert default["BACKEND"] == f"django.core.mail.backends.{backend}.EmailBackend"
    assert default["OPTIONS"] == options
    assert got["from"] == "Sluice <sluice@localhost>"
