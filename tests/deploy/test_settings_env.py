"""Yes/no values, URLs, ``key=value`` lists and log settings from the environment: read
strictly, and refused at start-up naming the variable (never echoing a password).

Review findings: django-environ's ``env.bool`` read every word it did not know as False, so
``SLUICE_HTTPS=ture`` or ``SECURE_SSL_REDIRECT=enabled`` silently turned HTTPS protection off,
although docs/deploy.md promised bad values stop the start. ``DATABASE_URL=postgres//bad`` was
``KeyError: 'ENGINE'`` (after a warning printing the parsed URL), ``SLUICE_LLM_MODELS=junk`` a
"dictionary update sequence" ValueError, ``SLUICE_LOG_LEVEL=verbose`` "Unable to configure
logger", ``SLUICE_LOG_FORMAT=xml`` a ValueError: none named the variable. Each case runs
``manage.py`` in a subprocess with a clean environment (settings are read once, at import), as
tests/deploy/test_settings_numbers.py does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_security_settings import ROOT, manage

SECRET = "Hunter2secret"
POSTGRES = "postgres://sluice:secret@127.0.0.1:5432/sluice"
REDIS = "redis://127.0.0.1:6379/0"

# Every yes/no setting, with what it needs to be read at all.
YES_NO: dict[str, dict[str, str]] = {
    "DEBUG": {},
    "SLUICE_HTTPS": {},
    "SECURE_SSL_REDIRECT": {},
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": {},
    "SECURE_HSTS_PRELOAD": {},
    "SESSION_COOKIE_SECURE": {},
    "CSRF_COOKIE_SECURE": {},
    "SLUICE_PGBOUNCER": {},
    "SLUICE_PG_PREPARE": {"DATABASE_URL": POSTGRES},
    "SLUICE_BROKER_ACK_EMULATION": {"CELERY_BROKER_URL": REDIS},
    "SLUICE_REVIEW_PUSH": {},
    "SLUICE_NOTIFY_DISPATCH_ON_COMMIT": {},
    "SLUICE_WEBHOOK_ALLOW_PRIVATE": {},
    "SLUICE_WEBHOOK_DISPATCH_ON_COMMIT": {},
    "SLUICE_SUPPORT_SEND_EMAIL": {},
}
SHOWN = (
    "DEBUG",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SLUICE_PGBOUNCER",
    "SLUICE_REVIEW_PUSH",
    "SLUICE_NOTIFY_DISPATCH_ON_COMMIT",
    "SLUICE_WEBHOOK_ALLOW_PRIVATE",
    "SLUICE_WEBHOOK_DISPATCH_ON_COMMIT",
    "SLUICE_SUPPORT_SEND_EMAIL",
    "SLUICE_LLM_MODELS",
    "SLUICE_LLM_PRICES",
    "SLUICE_NOTIFY_GROUP_WEBHOOKS",
    "SLUICE_LOG_FORMAT",
    "LOGGING",
    "DATABASES",
    "CACHES",
    "CELERY_BROKER_TRANSPORT_OPTIONS",
)
SHOW = (
    "from django.conf import settings as s; import json; "
    f"print(json.dumps({{k: getattr(s, k, None) for k in {SHOWN!r}}}, default=str))"
)


def settings_with(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    done = manage(tmp_path, env, "shell", "-c", SHOW)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def refusal(tmp_path: Path, env: dict[str, str]) -> str:
    """The last line of what ``manage.py check`` says when it refuses to start; the whole of
    what it printed never holds ``SECRET``."""
    done = manage(tmp_path, env, "check")
    assert done.returncode != 0, done.stdout
    assert SECRET not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), done.stderr
    return last.removeprefix("django.core.exceptions.ImproperlyConfigured: ")


# --- yes/no ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(YES_NO))
def test_every_yes_no_setting_refuses_a_word_it_does_not_know(tmp_path: Path, name: str) -> None:
    """``ture`` was False: for SLUICE_HTTPS, no redirect, no HSTS, no secure cookies."""
    message = refusal(tmp_path, {**YES_NO[name], name: "ture"})
    assert message.startswith(f"{name}='ture' is not a yes/no value"), message
    assert "1, true, yes or on, or 0, false, no or off" in message


@pytest.mark.parametrize("value", ["enabled", "2", "y", "-1", "truee"])
def test_a_secure_switch_that_is_not_yes_or_no_stops_the_start(tmp_path: Path, value: str) -> None:
    message = refusal(tmp_path, {"SECURE_SSL_REDIRECT": value})
    assert message.startswith(f"SECURE_SSL_REDIRECT={value!r} is not a yes/no value"), message


def test_the_defaults_are_kept(tmp_path: Path) -> None:
    """No environment: DEBUG off, so HTTPS-only; push on; webhooks and notifications sent on
    commit; private callback addresses refused; no support e-mail."""
    values = settings_with(tmp_path, {})
    assert {k: values[k] for k in SHOWN[:13]} == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SLUICE_PGBOUNCER": False,
        "SLUICE_REVIEW_PUSH": True,
        "SLUICE_NOTIFY_DISPATCH_ON_COMMIT": True,
        "SLUICE_WEBHOOK_ALLOW_PRIVATE": False,
        "SLUICE_WEBHOOK_DISPATCH_ON_COMMIT": True,
        "SLUICE_SUPPORT_SEND_EMAIL": False,
    }
    assert values["SLUICE_LLM_MODELS"] == {} and values["SLUICE_NOTIFY_GROUP_WEBHOOKS"] == {}
    assert values["SLUICE_LOG_FORMAT"] == "plain"
    assert values["LOGGING"]["loggers"]["workflows"]["level"] == "INFO"  # type: ignore[index]
    assert values["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"  # type: ignore[index]
    assert values["CACHES"]["default"]["BACKEND"].endswith("FileBasedCache")  # type: ignore[index]

    # DEBUG on: the HTTPS defaults follow it off. PgBouncer: push off, nothing prepared.
    debug = settings_with(tmp_path, {"DEBUG": "1"})
    assert debug["DEBUG"] is True and debug["SECURE_SSL_REDIRECT"] is False
    assert debug["SESSION_COOKIE_SECURE"] is False and debug["SECURE_HSTS_SECONDS"] == 0
    pooled = settings_with(
        tmp_path, {"SLUICE_PGBOUNCER": "1", "DATABASE_URL": POSTGRES, "CELERY_BROKER_URL": REDIS}
    )
    assert pooled["SLUICE_PGBOUNCER"] is True and pooled["SLUICE_REVIEW_PUSH"] is False
    assert "server_side_binding" not in pooled["DATABASES"]["default"]["OPTIONS"]  # type: ignore[index]
    assert pooled["CELERY_BROKER_TRANSPORT_OPTIONS"]["ack_emulation"] is False  # type: ignore[index]
    direct = settings_with(tmp_path, {"DATABASE_URL": POSTGRES})
    assert direct["DATABASES"]["default"]["OPTIONS"]["server_side_binding"] is True  # type: ignore[index]


def test_yes_no_words_in_any_case_with_blanks_around(tmp_path: Path) -> None:
    values = settings_with(
        tmp_path,
        {
            "SLUICE_HTTPS": " Off ",
            "SESSION_COOKIE_SECURE": "ON",
            "SLUICE_WEBHOOK_ALLOW_PRIVATE": "True",
            "SLUICE_SUPPORT_SEND_EMAIL": "yes",
            "SLUICE_WEBHOOK_DISPATCH_ON_COMMIT": "No",
            "SLUICE_NOTIFY_DISPATCH_ON_COMMIT": "0",
            "SLUICE_REVIEW_PUSH": "FALSE",
        },
    )
    assert values["SECURE_SSL_REDIRECT"] is False and values["CSRF_COOKIE_SECURE"] is False
    assert values["SESSION_COOKIE_SECURE"] is True
    assert values["SLUICE_WEBHOOK_ALLOW_PRIVATE"] is True
    assert values["SLUICE_SUPPORT_SEND_EMAIL"] is True
    assert values["SLUICE_WEBHOOK_DISPATCH_ON_COMMIT"] is False
    assert values["SLUICE_NOTIFY_DISPATCH_ON_COMMIT"] is False
    assert values["SLUICE_REVIEW_PUSH"] is False


def test_an_empty_yes_no_is_its_default(tmp_path: Path) -> None:
    """``SLUICE_HTTPS=`` (an env file's "not set") was False: HTTPS off. It is the default now,
    as for numbers."""
    values = settings_with(
        tmp_path, {"SLUICE_HTTPS": "", "SLUICE_WEBHOOK_DISPATCH_ON_COMMIT": " ", "DEBUG": ""}
    )
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is True and values["SESSION_COOKIE_SECURE"] is True
    assert values["SLUICE_WEBHOOK_DISPATCH_ON_COMMIT"] is True


# --- URLs, key=value lists, logging -------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "start", "expected"),
    [
        # KeyError: 'ENGINE', after a warning that printed the parsed URL, password included.
        (
            {"DATABASE_URL": f"postgres//sluice:{SECRET}@db/sluice"},
            "DATABASE_URL is not a database URL Sluice can use (no scheme)",
            "postgres://user:password@host:5432/name",
        ),
        (
            {"DATABASE_URL": "not-a-url"},
            "DATABASE_URL is not a database URL Sluice can use",
            "postgres://",
        ),
        # A bare ValueError from urllib.
        (
            {"DATABASE_URL": f"postgres://sluice:{SECRET}@db:notaport/sluice"},
            "DATABASE_URL is not a database URL Sluice can use (its scheme 'postgres'",
            "port",
        ),
        # "Invalid cache schema" named no variable.
        (
            {"CACHE_URL": f"redis//:{SECRET}@cache:6379/1"},
            "CACHE_URL is not a cache URL Sluice can use",
            "redis://host:6379/1",
        ),
        ({"CACHE_URL": ""}, "CACHE_URL is set but empty", "unset it"),
        # ValueError: dictionary update sequence element #0 has length 1; 2 is required
        (
            {"SLUICE_NOTIFY_GROUP_WEBHOOKS": f"https://hooks.slack.com/services/{SECRET}"},
            "SLUICE_NOTIFY_GROUP_WEBHOOKS: entry 1 is not key=value",
            "group=https://",
        ),
        (
            {"SLUICE_NOTIFY_GROUP_WEBHOOKS": f"leads=https://h/{SECRET},=https://h/x"},
            "SLUICE_NOTIFY_GROUP_WEBHOOKS: entry 2 is not key=value",
            "comma separated",
        ),
        (
            {"SLUICE_LLM_MODELS": "junk"},
            "SLUICE_LLM_MODELS: 'junk' is not key=value",
            "provider:model",
        ),
        (
            {"SLUICE_LLM_PRICES": "junk"},
            "SLUICE_LLM_PRICES: 'junk' is not key=value",
            "provider:model=input/output",
        ),
        # ValueError: Unable to configure logger 'workflows'
        (
            {"SLUICE_LOG_LEVEL": "verbose"},
            "SLUICE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL",
            "'verbose'",
        ),
        # A ValueError, not ImproperlyConfigured.
        ({"SLUICE_LOG_FORMAT": "xml"}, "SLUICE_LOG_FORMAT must be 'plain' or 'json'", "'xml'"),
    ],
)
def test_a_malformed_value_stops_the_start_naming_the_variable(
    tmp_path: Path, env: dict[str, str], start: str, expected: str
) -> None:
    message = refusal(tmp_path, env)
    assert message.startswith(start), message
    assert expected in message, message


def test_key_value_lists_and_log_settings_are_read(tmp_path: Path) -> None:
    values = settings_with(
        tmp_path,
        {
            "SLUICE_LLM_MODELS": "thread_analysis=openai:gpt-4o, support_ticket.grade = vllm:x ,",
            "SLUICE_LLM_PRICES": "openai:gpt-5=1.25/10",
            # "=" inside a value is kept.
            "SLUICE_NOTIFY_GROUP_WEBHOOKS": "leads=https://hooks.example.com/x?token=abc",
            "SLUICE_LOG_LEVEL": " warning ",
            "SLUICE_LOG_FORMAT": "JSON",
            "DATABASE_URL": POSTGRES,
            "CACHE_URL": "redis://127.0.0.1:6379/1",
        },
    )
    assert values["SLUICE_LLM_MODELS"] == {
        "thread_analysis": "openai:gpt-4o",
        "support_ticket.grade": "vllm:x",
    }
    assert values["SLUICE_LLM_PRICES"]["openai:gpt-5"] == ["1.25", "10"]  # type: ignore[index]
    assert values["SLUICE_NOTIFY_GROUP_WEBHOOKS"] == {
        "leads": "https://hooks.example.com/x?token=abc"
    }
    assert values["SLUICE_LOG_FORMAT"] == "json"
    assert {
        name: logger["level"]
        for name, logger in values["LOGGING"]["loggers"].items()  # type: ignore[attr-defined]
        if name in ("workflows", "reviews", "pipelines", "config")
    } == dict.fromkeys(("workflows", "reviews", "pipelines", "config"), "WARNING")
    default = values["DATABASES"]["default"]  # type: ignore[index]
    assert (default["ENGINE"], default["NAME"], default["PASSWORD"]) == (
        "django.db.backends.postgresql",
        "sluice",
        "secret",
    )
    assert values["CACHES"]["default"]["LOCATION"] == "redis://127.0.0.1:6379/1"  # type: ignore[index]


def test_settings_read_no_yes_no_list_or_url_through_django_environ() -> None:
    """Every yes/no goes through ``_env_bool``, every ``key=value`` list through ``_env_dict``,
    the database and cache URLs through ``_database_url`` / ``_cache_url``."""
    source = (ROOT / "config" / "settings.py").read_text()
    assert not re.findall(r"\benv\.(?:bool|dict|db|db_url|cache|cache_url|json)\(", source)


# --- comments that said otherwise ---------------------------------------------------------------


def test_the_settings_comments_agree_with_the_code() -> None:
    """The PgBouncer comment said Sluice "does not LISTEN" (reviews/push.py does); the security
    comment said ``check --deploy`` passes without EMAIL_URL (it fails with mail.E001, which
    tests/test_security_settings.py checks)."""
    source = (ROOT / "config" / "settings.py").read_text()
    assert 'f"LISTEN {CHANNEL}"' in (ROOT / "reviews" / "push.py").read_text()
    assert "does not LISTEN" not in source
    assert "reviews/push.py" in source.split("SLUICE_PGBOUNCER = ")[0].rsplit("\n\n", 1)[-1]
    security = source.split("# --- Security (production)")[1].split("_SECURE = ")[0]
    passes = " ".join(security.replace("#", " ").split())
    assert "SECRET_KEY, ALLOWED_HOSTS, DATABASE_URL and EMAIL_URL set" in passes
    assert "mail.E001" in passes
