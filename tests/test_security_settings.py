"""Production security settings: ``check --deploy`` is clean with the production environment,
and ``make run``'s environment (DEBUG=1 on plain http) keeps working.

Each check runs ``manage.py`` in a subprocess with a clean environment, since settings are read
from the environment once, at import.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "SLUICE_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def production_env() -> dict[str, str]:
    return {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "sluice.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://sluice.example.com",
        "DATABASE_URL": "postgres://sluice:secret@127.0.0.1:5432/sluice",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
        "CACHE_URL": "redis://127.0.0.1:6379/1",
        "SLUICE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "SLUICE_CLIENT_IP_HEADER": "X-Forwarded-For",
        # Reviewer notifications need a real mail server in production (no connection is made
        # by `check`).
        "EMAIL_URL": "smtp+tls://sluice:secret@127.0.0.1:587",
    }


SHOW = (
    "from django.conf import settings as s; import json; print(json.dumps({k: getattr(s, k, None)"
    " for k in ('DEBUG', 'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS',"
    " 'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_HSTS_PRELOAD', 'SESSION_COOKIE_SECURE',"
    " 'CSRF_COOKIE_SECURE', 'SECURE_PROXY_SSL_HEADER')}))"
)


def settings_in(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    result = manage(tmp_path, env, "shell", "-c", SHOW)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_it_passes_check_deploy_with_the_production_environment(tmp_path: Path) -> None:
    result = manage(tmp_path, production_env(), "check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNINGS:" not in output and "security.W" not in output, output
    assert "System check identified no issues" in output


def test_check_deploy_says_when_production_has_no_mail_server(tmp_path: Path) -> None:
    """Without EMAIL_URL, mail goes to the console: fine for `make run`, an error for a deploy."""
    env = {k: v for k, v in production_env().items() if k != "EMAIL_URL"}
    result = manage(tmp_path, env, "check", "--deploy")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "mail.E001" in output and "console.EmailBackend" in output, output


def test_it_defaults_to_https_only_when_debug_is_off(tmp_path: Path) -> None:
    values = settings_in(tmp_path, production_env())
    assert values == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


def test_each_security_setting_can_be_set_from_the_environment(tmp_path: Path) -> None:
    env = {
        **production_env(),
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_HSTS_SECONDS": "600",
        "SECURE_HSTS_PRELOAD": "0",
        "SLUICE_PROXY_SSL_HEADER": "X-Forwarded-Scheme=secure",
    }
    values = settings_in(tmp_path, env)
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 600
    assert values["SECURE_HSTS_PRELOAD"] is False
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_SCHEME", "secure"]


def test_a_production_without_its_own_secret_key_gets_a_random_one_and_a_warning(
    tmp_path: Path,
) -> None:
    """Never the key in the source (review finding: it served with it, silently, so anyone
    could forge sessions and the default webhook signatures): a random key made once for the
    machine, kept in var/secret_key (owner only), and sluice.W001 saying to set SECRET_KEY."""
    env = production_env()
    del env["SECRET_KEY"]
    result = manage(tmp_path, env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "sluice.W001" in result.stdout + result.stderr
    assert "security.W009" not in result.stdout + result.stderr
    key = tmp_path / "var" / "secret_key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text()) >= 50
    shown = "from django.conf import settings as s; print(s.SECRET_KEY)"
    first = manage(tmp_path, env, "shell", "-v", "0", "-c", shown).stdout.strip()
    assert first == key.read_text() and "insecure" not in first
    assert manage(tmp_path, env, "shell", "-v", "0", "-c", shown).stdout.strip() == first
    # a file left empty (by hand) stops the start with what to do, not a server without a key
    key.write_text("")
    result = manage(tmp_path, env, "check")
    assert result.returncode != 0 and "secret_key is empty: delete it, or set SECRET_KEY" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SLUICE_LEASE_SECONDS", "0", "SLUICE_LEASE_SECONDS must be a number from 2"),
        ("SLUICE_SWEEP_INTERVAL", "-1", "SLUICE_SWEEP_INTERVAL must be a number"),
        ("SLUICE_SWEEP_INTERVAL", "nan", "SLUICE_SWEEP_INTERVAL must be a number"),
        ("SLUICE_REVIEW_PAGE_SIZE", "0", "SLUICE_REVIEW_PAGE_SIZE must be a number from 1"),
        ("SLUICE_MAX_PARALLEL", "-1", "SLUICE_MAX_PARALLEL must be a number from 1"),
        ("SLUICE_LLM_CONCURRENCY", "-1", "SLUICE_LLM_CONCURRENCY must be a number from 0"),
        ("SLUICE_LEASE_SECONDS", "abc", "SLUICE_LEASE_SECONDS='abc' is not a number"),
        ("CELERY_BROKER_URL", "", "CELERY_BROKER_URL is set but empty"),
        ("DATABASE_URL", " ", "DATABASE_URL is set but empty"),
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/x?conn_max_age=abc",
            "DATABASE_URL's conn_max_age must be a whole number of seconds or None, not 'abc'",
        ),
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/x?conn_max_age=-5",
            "DATABASE_URL's conn_max_age must be a whole number",
        ),
        ("CONN_MAX_AGE", "soon", "CONN_MAX_AGE='soon' is not a number"),
    ],
)
def test_a_setting_out_of_range_stops_the_start_naming_it(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    """Found by review: a lease of 0 ran steps twice at once, a sweep interval of 0 flooded
    the broker, a page size of 0 was a 500 on every queue page; junk gave messages that did
    not name the variable, and an empty broker URL meant AMQP on localhost."""
    env = {name: value}
    if name == "CONN_MAX_AGE":  # read for PostgreSQL only
        env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/x"
    result = manage(tmp_path, env, "check")
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("debug", ["1", None])
def test_the_dev_environment_still_works(tmp_path: Path, debug: str | None) -> None:
    """``make run`` sets DEBUG=1 and nothing else; plain ``manage.py`` sets nothing."""
    env = {"DEBUG": debug} if debug else {}
    result = manage(tmp_path, env, "check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    if debug:
        values = settings_in(tmp_path, env)
        assert values["SECURE_SSL_REDIRECT"] is False
        assert values["SESSION_COOKIE_SECURE"] is False and values["CSRF_COOKIE_SECURE"] is False
        assert values["SECURE_HSTS_SECONDS"] == 0
        assert values["SECURE_PROXY_SSL_HEADER"] is None
