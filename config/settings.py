"""Sluice settings, driven by the environment.

So one can check out the code and run ``make run`` with nothing else: with no environment the
database is SQLite under ``var/`` and the Celery broker is kombu's filesystem transport (no
server). Production sets ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import secrets
import socket
import warnings
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SLUICE_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()


def _env_number(
    name: str, default: float, *, low: float, high: float = math.inf, forever: bool = False
) -> float:
    """A number from the environment, from ``low`` to ``high``; anything else stops the
    process at start-up naming the variable (a lease of 0 ran steps twice at once, a sweep
    interval of 0 flooded the broker, a page size of 0 was a 500 on every queue page).

    Python reads it (``1e6``, ``+5``, ``1_000``), never django-environ's ``env.float``, which
    drops every character but digits, ``,``, ``.`` and ``-`` first: ``1e6`` became 16 (a
    retention of 16 days pruned history) and ``inf`` or ``1e-3`` a bare ValueError.
    ``forever``: ``inf`` is allowed too (a retention that keeps everything); NaN never is."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else float(default)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if forever and value == math.inf:
        return value
    if not (math.isfinite(value) and low <= value <= high):
        bound = f"{low:.15g} or more"
        if math.isfinite(high):
            bound = f"from {low:.15g} to {high:.15g}"
        also = " (or inf)" if forever else ""
        raise ImproperlyConfigured(f"{name} must be a number {bound}{also}, not {raw!r}")
    return value


def _env_int(name: str, default: int, *, low: int, high: float = math.inf) -> int:
    """A whole number from the environment, read as ``_env_number`` reads one (``1e3`` is
    1000, where ``env.int`` stopped the start with a bare ValueError); ``1.5`` is refused."""
    value = _env_number(name, default, low=low, high=high)
    if value != int(value):
        raise ImproperlyConfigured(f"{name} must be a whole number, not {os.environ[name]!r}")
    return int(value)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _env_bool(name: str, default: bool) -> bool:
    """A yes/no from the environment: 1/0, true/false, yes/no or on/off, in any case, blanks
    around it ignored; unset or empty is ``default`` (as for numbers: ``VAR=`` in an env file
    means "not set"). Anything else stops the process at start-up naming the variable, where
    django-environ's ``env.bool`` read every word it did not know as False: ``SLUICE_HTTPS=ture``
    or ``SECURE_SSL_REDIRECT=enabled`` silently turned HTTPS protection off."""
    raw = os.environ.get(name, "")
    word = raw.strip().lower()
    if not word:
        return default
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw[:40]!r} is not a yes/no value: give 1, true, yes or on, or 0, false, no "
        "or off (any case), or leave it unset for the default"
    )


def _env_dict(name: str, form: str, *, echo: bool = True) -> dict[str, str]:
    """Comma-separated ``key=value`` pairs from the environment (``=`` inside a value is
    kept; blanks around keys and values, and empty entries, are ignored). An entry that is
    not ``key=value`` stops the start naming the variable and the form expected, where
    ``env.dict`` raised a bare "dictionary update sequence" ValueError. ``echo=False`` leaves
    the entry out of the message (a webhook URL is a secret)."""
    pairs: dict[str, str] = {}
    for number, entry in enumerate(os.environ.get(name, "").split(","), start=1):
        if not entry.strip():
            continue
        key, eq, value = entry.partition("=")
        if not (eq and key.strip() and value.strip()):
            what = f"{entry.strip()[:60]!r}" if echo else f"entry {number}"
            raise ImproperlyConfigured(
                f"{name}: {what} is not key=value (give {form}, comma separated)"
            )
        pairs[key.strip()] = value.strip()
    return pairs


def _database_url(default: str) -> dict[str, Any]:
    """django-environ's reading of ``DATABASE_URL``, or a clear start-up error naming the
    variable. A URL without a scheme it knows (``postgres//db``, ``not-a-url``) was a bare
    ``KeyError: 'ENGINE'`` after a warning that printed the parsed URL, password included; a
    port that is not a number, a bare ValueError. The URL is never echoed."""
    url = os.environ.get("DATABASE_URL", default)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Engine not recognized from url: {…password…}"
            config = dict(environ.Env.db_url_config(url))
    except (ValueError, KeyError, TypeError, ImproperlyConfigured):
        config = {}
    if not config.get("ENGINE"):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        what = f"its scheme {scheme[:20]!r} or its port is wrong" if scheme else "no scheme"
        raise ImproperlyConfigured(
            f"DATABASE_URL is not a database URL Sluice can use ({what}): give "
            "postgres://user:password@host:5432/name (port optional, a number), or "
            "sqlite:////absolute/path.sqlite3"
        )
    return config


def _conn_max_age(database: dict[str, object]) -> int | None:
    """How long a connection is kept, in seconds (``None``: for good): the URL's
    ``conn_max_age``, else ``CONN_MAX_AGE``, else 60. Junk stops the start with its source's
    name, not the first request with a TypeError deep in Django."""
    if "CONN_MAX_AGE" not in database:
        return _env_int("CONN_MAX_AGE", 60, low=0)
    value = database["CONN_MAX_AGE"]
    if value is None or str(value).strip().lower() == "none":
        return None
    try:
        seconds = int(str(value))
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ImproperlyConfigured(
            f"DATABASE_URL's conn_max_age must be a whole number of seconds or None, not {value!r}"
        )
    return seconds


def _secret_key() -> str:
    """``SECRET_KEY``, or else a random key made once for this machine and kept in
    ``var/secret_key`` (readable by its owner only): never a key anyone could read in the
    source, which would let them forge sessions and the default webhook signatures. Machines
    that serve one Sluice together must share SECRET_KEY (system check sluice.W001)."""
    if os.environ.get("SECRET_KEY", "").strip():
        return os.environ["SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    try:
        if not path.exists():
            # Written whole under another name, then linked into place: the file never exists
            # half-written, and of several processes starting at once the first link wins.
            part = VAR_DIR / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(50))
            try:
                os.link(part, path)
            except FileExistsError:
                pass
            finally:
                part.unlink(missing_ok=True)
        key = path.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set and {path} cannot be made or read ({exc}): set SECRET_KEY, "
            "or let this user write SLUICE_VAR_DIR"
        ) from None
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it, or set SECRET_KEY")
    return key


SECRET_KEY = _secret_key()
SLUICE_SECRET_KEY_FROM_FILE = not os.environ.get("SECRET_KEY", "").strip()
DEBUG = _env_bool("DEBUG", False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A login form posted from a second tab after signing in in the first: on to its page.
CSRF_FAILURE_VIEW = "config.security.csrf_failure"

INSTALLED_APPS = [
    "config.apps.SluiceAdminConfig",  # django.contrib.admin, throttled (config.security)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "workflows",
    "pipelines",
    "reviews",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before anything reads the query or the headers: a NUL there is a 400, never a 500.
    "config.middleware.RefuseNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, so its process_exception is asked first: a busy database is a 503, not the 500 page.
    "config.middleware.DatabaseBusyMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",  # {{ csp_nonce }}, see SECURE_CSP
            ],
        },
    },
]

# PostgreSQL is reached through PgBouncer in transaction pooling mode: no session state (no
# prepared statements, no server-side cursors). Sluice takes no advisory locks and sets nothing
# per session. Its one LISTEN (the reviewer pages' live updates, reviews/push.py) runs on a
# connection of its own: to SLUICE_PUSH_DATABASE_URL, PostgreSQL directly, when set; else push
# is off by default with SLUICE_PGBOUNCER=1 (SLUICE_REVIEW_PUSH below), as a LISTEN through a
# transaction pooler hears nothing.
SLUICE_PGBOUNCER = _env_bool("SLUICE_PGBOUNCER", False)

# Database: SQLite by default (the embedded default), PostgreSQL via DATABASE_URL.
for _name in ("DATABASE_URL", "CELERY_BROKER_URL"):
    if _name in os.environ and not os.environ[_name].strip():
        raise ImproperlyConfigured(f"{_name} is set but empty: unset it, or give a URL")
DATABASES = {"default": _database_url(f"sqlite:///{VAR_DIR / 'sluice.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, so two writers queue up
    # instead of one failing with "database is locked" halfway through a transaction.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # Server-side binding lets psycopg prepare the engine's hot statements (the checkpoint
    # runs once per step): measured 0.79 -> 0.53 ms per step. Behind a pooler in transaction
    # mode (SLUICE_PGBOUNCER=1, see docs/deploy-pgbouncer.md) a session's prepared statements
    # live on a server connection the next transaction may not get, so nothing is prepared
    # (PgBouncer < 1.21 cannot keep them at all); SLUICE_PG_PREPARE=0 turns only that off.
    DATABASES["default"].setdefault("OPTIONS", {})
    # A server that accepts the connection and never answers must not hang a request, a
    # probe or a worker for good (libpq has no timeout of its own).
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", _env_int("SLUICE_DB_CONNECT_TIMEOUT", 10, low=1, high=600)
    )
    if _env_bool("SLUICE_PG_PREPARE", not SLUICE_PGBOUNCER):
        DATABASES["default"]["OPTIONS"].setdefault("server_side_binding", True)
        # Django disables psycopg's automatic prepare unless told; prepare on 2nd use.
        DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 2)
    if SLUICE_PGBOUNCER:
        # A named server-side cursor (QuerySet.iterator()) outside a transaction is WITH HOLD:
        # it outlives the transaction, hence the server connection PgBouncer hands back.
        DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    DATABASES["default"]["CONN_MAX_AGE"] = _conn_max_age(DATABASES["default"])
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if env("SLUICE_TEST_DB_NAME", default=""):
    DATABASES["default"]["TEST"] = {"NAME": env("SLUICE_TEST_DB_NAME")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/reviews/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

DATA_UPLOAD_MAX_MEMORY_SIZE = _env_int(
    "DATA_UPLOAD_MAX_MEMORY_SIZE", 2 * 1024 * 1024, low=1024, high=2**34
)

# --- Security (production) --------------------------------------------------------------------
# Secure by default whenever DEBUG is off, so `manage.py check --deploy` passes with no more than
# SECRET_KEY, ALLOWED_HOSTS, DATABASE_URL and EMAIL_URL set (without EMAIL_URL, mail goes to the
# console, which the deploy check reports as mail.E001; see MAILERS below). `make run` serves
# plain http on 127.0.0.1 with DEBUG off (so its error pages are the product's own) and
# SLUICE_HTTPS=0, which turns all of this off at once. Each can still be set from the
# environment, e.g. SECURE_SSL_REDIRECT=0 when the proxy in front already redirects http to
# https. A yes/no that is not one (SLUICE_HTTPS=ture) stops the start (_env_bool), never
# reads as "off".
_SECURE = _env_bool("SLUICE_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", _SECURE)
SECURE_HSTS_SECONDS = _env_int(
    "SECURE_HSTS_SECONDS", 31_536_000 if _SECURE else 0, low=0, high=10 * 366 * 86400
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", _SECURE)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", _SECURE)
SESSION_COOKIE_SECURE = _env_bool("SESSION_COOKIE_SECURE", _SECURE)
# Flash messages live in the session, on the server: a new API key is shown once in one, and
# Django's default keeps messages in a cookie (signed, not encrypted), so the key would travel
# in Set-Cookie and Cookie headers, which proxies and browsers log and keep.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
CSRF_COOKIE_SECURE = _env_bool("CSRF_COOKIE_SECURE", _SECURE)
# Behind a TLS-terminating proxy: the header it sets on https requests, "X-Forwarded-Proto" (or
# "X-Forwarded-Proto=https" for another value). Only set it when the proxy always sets or
# strips that header: a client could otherwise claim https.
_proxy_header, _, _proxy_value = env("SLUICE_PROXY_SSL_HEADER", default="").partition("=")
if _proxy_header.strip():
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _proxy_header.strip().upper().replace("-", "_"),
        _proxy_value.strip() or "https",
    )
# The request header holding the client address behind that proxy ("X-Forwarded-For"; its last
# entry, the one the proxy appended, is used). Empty: REMOTE_ADDR. Login throttling counts
# failures per client address, so behind a proxy this must be set.
SLUICE_CLIENT_IP_HEADER = env("SLUICE_CLIENT_IP_HEADER", default="")

# Login throttling (config.security): this many failed logins for one username, or from one
# client address, within the window lock further attempts out until the oldest failure ages
# out of it. Failures are counted in the cache below.
SLUICE_LOGIN_MAX_FAILURES = _env_int("SLUICE_LOGIN_MAX_FAILURES", 5, low=0, high=10**6)
SLUICE_LOGIN_MAX_FAILURES_PER_IP = _env_int(
    "SLUICE_LOGIN_MAX_FAILURES_PER_IP", 20, low=0, high=10**6
)
SLUICE_LOGIN_WINDOW_SECONDS = _env_int(
    "SLUICE_LOGIN_WINDOW_SECONDS", 15 * 60, low=1, high=30 * 86400
)
# Password-reset mails per address and per client address in a window (config.security).
SLUICE_PASSWORD_RESET_MAX_PER_EMAIL = _env_int(
    "SLUICE_PASSWORD_RESET_MAX_PER_EMAIL", 3, low=0, high=10**6
)
SLUICE_PASSWORD_RESET_MAX_PER_IP = _env_int(
    "SLUICE_PASSWORD_RESET_MAX_PER_IP", 10, low=0, high=10**6
)
SLUICE_PASSWORD_RESET_WINDOW_SECONDS = _env_int(
    "SLUICE_PASSWORD_RESET_WINDOW_SECONDS", 60 * 60, low=1, high=30 * 86400
)


def _cache_url(default: str) -> dict[str, Any]:
    """django-environ's reading of ``CACHE_URL``, or a start-up error naming the variable
    ("Invalid cache schema" named none) without echoing the URL (it may hold a password)."""
    url = os.environ.get("CACHE_URL", default)
    if not url.strip():  # was an empty cache, and a KeyError at the first login
        raise ImproperlyConfigured("CACHE_URL is set but empty: unset it, or give a URL")
    try:
        return dict(environ.Env.cache_url_config(url))
    except (ValueError, KeyError, ImproperlyConfigured):
        raise ImproperlyConfigured(
            "CACHE_URL is not a cache URL Sluice can use: give redis://host:6379/1 (or "
            "rediss://, with user:password@ if needed), filecache:///path or locmemcache://"
        ) from None


# The cache holds the login failure counts, so every web process must share it: by default a
# file cache under SLUICE_VAR_DIR (all processes of one machine); several machines set
# CACHE_URL=redis://host:6379/1 (a database other than the broker's).
CACHES = {"default": _cache_url(f"filecache://{VAR_DIR / 'cache'}")}

# SLUICE_LOG_FORMAT=json: one JSON object per line (time, level, logger, message, and the run
# id, generation and step the engine is working on; workflows/logs.py). Default: plain text.
SLUICE_LOG_FORMAT = os.environ.get("SLUICE_LOG_FORMAT", "").strip().lower() or "plain"
if SLUICE_LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(
        f"SLUICE_LOG_FORMAT must be 'plain' or 'json', not {os.environ['SLUICE_LOG_FORMAT'][:40]!r}"
    )
# The level of Sluice's loggers, in any case (``warning``); unset or empty: INFO. Checked here,
# where a word logging does not know was "ValueError: Unable to configure logger" naming none.
SLUICE_LOG_LEVEL = os.environ.get("SLUICE_LOG_LEVEL", "").strip().upper() or "INFO"
if SLUICE_LOG_LEVEL not in logging.getLevelNamesMapping():
    raise ImproperlyConfigured(
        "SLUICE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL (any case), not "
        f"{os.environ['SLUICE_LOG_LEVEL'][:40]!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "workflows.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        },
        "json": {"()": "workflows.logs.JsonFormatter"},
    },
    "filters": {"engine_context": {"()": "workflows.logs.EngineContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": SLUICE_LOG_FORMAT,
            "filters": ["engine_context"],
        }
    },
    "loggers": {
        "workflows": {"handlers": ["console"], "level": SLUICE_LOG_LEVEL},
        "reviews": {"handlers": ["console"], "level": SLUICE_LOG_LEVEL},
        "pipelines": {"handlers": ["console"], "level": SLUICE_LOG_LEVEL},
        "config": {"handlers": ["console"], "level": SLUICE_LOG_LEVEL},
        # Failed logins and lockouts (sluice.security: username and client address, never the
        # password), the worker's own lines (sluice.worker).
        "sluice": {"handlers": ["console"], "level": "INFO"},
        # A server error's traceback (with DEBUG off Django would only mail it to ADMINS).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}

# --- Celery -----------------------------------------------------------------------------------
_BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem"):
    for sub in ("queue", "processed", "control"):
        (_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "control_folder": str(_BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    # Messages only ring doorbells: the durable copy of one is the run's (or step's) row in
    # PostgreSQL, which the sweep rings again after SLUICE_DOORBELL_GRACE_SECONDS. kombu's
    # ack emulation keeps a second copy of every message in Redis (a pipeline when it is
    # delivered and another when it is acked, about a tenth of a worker's CPU in W1) only to
    # redeliver it after the visibility timeout, long after the sweep did. Off by default;
    # SLUICE_BROKER_ACK_EMULATION=1 turns it back on (redelivery after 600 s, the
    # visibility_timeout below; it means nothing while emulation is off). Without it, late
    # acks still put a message back on a warm shutdown or a lost prefork child (kombu's
    # in-memory QoS); only a worker killed outright drops what it had taken, and the sweep
    # rings for that work again after the grace.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": 600,
        "ack_emulation": _env_bool("SLUICE_BROKER_ACK_EMULATION", False),
        # A broker that accepts connections and never answers must not hang a start, a
        # probe or a publish for good (kombu's default is to wait forever). Above the
        # consumer's 1 s BRPOP, so an idle worker is not cut off.
        "socket_connect_timeout": 5,
        "socket_timeout": _env_number("SLUICE_BROKER_SOCKET_TIMEOUT", 30.0, low=2.0, high=3600),
    }
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker reconnects to the broker for as long as it is down: Celery's default gives up after
# 100 tries (about 46 minutes of a Redis outage), and the worker's exit then stopped every
# process of `make run` and the Procfile supervisor. The runs wait in the tables meanwhile.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ALWAYS_EAGER = False
SLUICE_SWEEP_INTERVAL = _env_number("SLUICE_SWEEP_INTERVAL", 2.0, low=0.2, high=3600)
# How often the beat frees the claims of people deactivated, or removed from a gate's group or
# tenant, while they held it (``reviews.claims``): one query per claim holder.
SLUICE_VOID_CLAIM_INTERVAL = _env_number("SLUICE_VOID_CLAIM_INTERVAL", 60.0, low=1, high=86400)
# A static schedule; every periodic task is idempotent, so two beats by mistake are harmless.
# The scheduler takes a last run saved in the future as now (config.celery.Scheduler).
CELERY_BEAT_SCHEDULER = "config.celery:Scheduler"
CELERY_BEAT_SCHEDULE = {
    "sluice-sweep": {"task": "workflows.sweep", "schedule": SLUICE_SWEEP_INTERVAL},
    "sluice-expire-gates": {"task": "reviews.expire_gates", "schedule": SLUICE_SWEEP_INTERVAL},
    "sluice-deliver-outbox": {"task": "workflows.deliver_outbox", "schedule": 5.0},
    # Reviewer notifications: reminders due and digests whose window ended.
    "sluice-notify": {"task": "reviews.notify", "schedule": SLUICE_SWEEP_INTERVAL},
    "sluice-prune": {"task": "workflows.prune", "schedule": 3600.0},
    # Claims of people who lost the right to decide their gates (reviews.claims).
    "sluice-void-claims": {
        "task": "reviews.release_void_claims",
        "schedule": SLUICE_VOID_CLAIM_INTERVAL,
    },
}
# Message priorities. The sweeps share the workers' queue with the doorbells, and after a fault
# (a worker lost, the database back) that queue holds a backlog. FIFO, the sweep that reclaims a
# dead worker's leases, fires due timers and expires gates waited behind it (13 s in a
# `make chaos` run, docs/reliability.md), and the doorbells it then rang for that late work
# waited behind the backlog again. So: the beat's sweeps first (SLUICE_SWEEP_PRIORITY), then
# what the sweep rings for (SLUICE_OVERDUE_PRIORITY: due, reclaimed or lost work), then every
# other message. Redis delivers priority 0 first (kombu keeps a list per priority step: 0, 3,
# 6, 9); other brokers' queues are declared without priorities, so nothing is set there.
SLUICE_SWEEP_PRIORITY = 0
SLUICE_OVERDUE_PRIORITY: int | None = None
SLUICE_WORK_PRIORITY = 6
if CELERY_BROKER_URL.startswith(("redis", "rediss", "sentinel")):
    SLUICE_OVERDUE_PRIORITY = 3
    CELERY_TASK_ROUTES = {
        "workflows.sweep": {"priority": SLUICE_SWEEP_PRIORITY},
        "reviews.expire_gates": {"priority": SLUICE_SWEEP_PRIORITY},
        "reviews.notify": {"priority": SLUICE_SWEEP_PRIORITY},
        "*": {"priority": SLUICE_WORK_PRIORITY},
    }

# --- Probes and metrics ------------------------------------------------------------------------


def _networks(name: str) -> list[str]:
    """Comma-separated CIDRs from the environment, each stripped and written out the one way
    (``10.1.2.3/8`` is ``10.0.0.0/8``); junk stops the start naming the variable and the
    entry, where it used to be a 500 on every scrape."""
    networks = []
    for part in os.environ.get(name, "").split(","):
        if not part.strip():
            continue
        try:
            networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {part.strip()[:60]!r} is not a network (give CIDRs such as "
                "10.0.0.0/8,127.0.0.1/32, comma separated)"
            ) from None
    return networks


# /healthz, /readyz and /metrics answer plain http too: load balancers and Prometheus probe the
# processes directly, behind the TLS proxy. With or without a trailing slash: a probe
# configured with one must not be sent to https (where a load balancer's probe cannot follow).
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^readyz/?$", r"^metrics$"]
# /readyz fails "beat" when the last sweep is older than this many seconds (0: ten sweep
# intervals, at least 30 s).
SLUICE_READY_SWEEP_MAX_AGE = _env_number("SLUICE_READY_SWEEP_MAX_AGE", 0.0, low=0, high=7 * 86400)
# /metrics is off unless one of these is set; with both, a scrape needs both. The token goes in
# "Authorization: Bearer <token>"; the networks are CIDRs matched against the client address
# (SLUICE_CLIENT_IP_HEADER behind a proxy).
SLUICE_METRICS_TOKEN = env("SLUICE_METRICS_TOKEN", default="")
SLUICE_METRICS_ALLOW = _networks("SLUICE_METRICS_ALLOW")
# Database gauges count at most this many rows each (a scrape's cost stays bounded). At least
# 1: 0 would report every gauge as 0, a calm dashboard in the middle of an outage.
SLUICE_METRICS_COUNT_CAP = _env_int("SLUICE_METRICS_COUNT_CAP", 100_000, low=1, high=10**9)

# --- Sluice engine ----------------------------------------------------------------------------
# Extra modules that define workflows, comma separated dotted paths.
SLUICE_WORKFLOW_MODULES = env.list("SLUICE_WORKFLOW_MODULES", default=[])
# The host part of every lease owner id ("<host>:<pid>:<thread>:<nonce>"), shown on the ops
# pages: which machine holds a run. The hostname unless set (containers often share one).
SLUICE_HOST_ID = env("SLUICE_HOST_ID", default="") or socket.gethostname()
# Seconds a run or step lease lasts; the worker renews it while it works.
# At least 2 s: the heartbeat renews it every third of it (at least every 0.5 s).
SLUICE_LEASE_SECONDS = _env_number("SLUICE_LEASE_SECONDS", 8.0, low=2.0, high=3600)
# The longest wait a step's error may ask for before its retry (an HTTP Retry-After): longer
# hints, from outside, are cut to this.
SLUICE_MAX_RETRY_AFTER_SECONDS = _env_number(
    "SLUICE_MAX_RETRY_AFTER_SECONDS", 3600.0, low=0, high=30 * 86400
)
# How long a rung doorbell may go unanswered before the sweep rings again.
SLUICE_DOORBELL_GRACE_SECONDS = _env_number(
    "SLUICE_DOORBELL_GRACE_SECONDS", 5.0, low=0.5, high=3600
)
# How long a worker whose database connection broke (a restart, a failover) waits for the
# database before it gives the message up (the sweep then rings again once the database is back).
SLUICE_DATABASE_WAIT_SECONDS = _env_number("SLUICE_DATABASE_WAIT_SECONDS", 60.0, low=0, high=86400)
# Default cap on branches of one run in flight at once.
SLUICE_MAX_PARALLEL = _env_int("SLUICE_MAX_PARALLEL", 10, low=1, high=100_000)
# The widest ctx.map / ctx.parallel: one over it fails the run (FanOutTooWide) before anything
# of it is written. A fan-out is one transaction (4 s and 215 MB of worker memory at 50,000).
SLUICE_MAX_FANOUT = _env_int("SLUICE_MAX_FANOUT", 10_000, low=1, high=1_000_000)
# A fan-out in a pool limited by concurrency rings for its first branches this many per
# message; the worker that takes one runs them at once, in threads of its own (at most
# SLUICE_BRANCH_THREADS per process). PostgreSQL only; 1 sends one message per branch.
SLUICE_BRANCH_BATCH = _env_int("SLUICE_BRANCH_BATCH", 10, low=1, high=1000)
SLUICE_BRANCH_THREADS = _env_int("SLUICE_BRANCH_THREADS", 16, low=0, high=1000)
# Values over this many bytes of JSON are stored out of row; over the hard limit a step fails.
SLUICE_PAYLOAD_INLINE_LIMIT = _env_int("SLUICE_PAYLOAD_INLINE_LIMIT", 64 * 1024, low=0, high=2**30)
SLUICE_PAYLOAD_HARD_LIMIT = _env_int(
    "SLUICE_PAYLOAD_HARD_LIMIT", 8 * 1024 * 1024, low=1, high=2**30
)
# Finished runs older than this are pruned by the sweep, journal included; inf keeps them all.
SLUICE_RETENTION_DAYS = _env_number("SLUICE_RETENTION_DAYS", 30.0, low=0, forever=True)
# Runs (and outbox rows) deleted per prune transaction: a few thousand keeps each one short
# (~0.2 s) while the per-statement costs are shared by many runs.
SLUICE_PRUNE_BATCH = _env_int("SLUICE_PRUNE_BATCH", 2000, low=1, high=10**6)
# The share of its time the retention prune works; it rests the rest (see sweeper.prune).
SLUICE_PRUNE_DUTY = _env_number("SLUICE_PRUNE_DUTY", 0.5, low=0.05, high=1)
# How long one (hourly) prune task works, its rests included: then it stops and the next hour's
# goes on, so a large backlog never holds a worker slot for hours. One prune at a time (a lease
# row): a second returns at once. inf drains the backlog in one task.
SLUICE_PRUNE_MAX_SECONDS = _env_number("SLUICE_PRUNE_MAX_SECONDS", 300.0, low=1, forever=True)
# Outbox rows (webhook deliveries and other side effects) that were delivered, or gave up
# ("dead"), are pruned this many days later; pending rows are never pruned.
SLUICE_OUTBOX_RETENTION_DAYS = _env_number("SLUICE_OUTBOX_RETENTION_DAYS", 7.0, low=0, forever=True)
# What pruning a run does with its gates' audit trail (decisions, who/when, comments, edits,
# approvals, every gate event): "keep" copies it into the reviews.GateRecord table, which
# retention never prunes; "archive" appends it as JSON lines to a monthly file in
# SLUICE_GATE_ARCHIVE_DIR (and keeps nothing in the database). See docs/reviews.md.
SLUICE_GATE_TRAIL_ON_PRUNE = env.str("SLUICE_GATE_TRAIL_ON_PRUNE", default="keep").strip().lower()
if SLUICE_GATE_TRAIL_ON_PRUNE not in ("keep", "archive"):
    # Refused at startup, not at the first prune an hour later (which would refuse too: a
    # typo must not lose a trail).
    raise ImproperlyConfigured(
        f"SLUICE_GATE_TRAIL_ON_PRUNE is {SLUICE_GATE_TRAIL_ON_PRUNE[:40]!r}; "
        "it must be keep or archive"
    )
SLUICE_GATE_ARCHIVE_DIR = env.str("SLUICE_GATE_ARCHIVE_DIR", default=str(VAR_DIR / "archive"))
# Pools: name -> max concurrency across all workers (None = unlimited) and an optional rate
# limit of `rate_limit` step starts per `rate_period` seconds. Rows in the Pool table (editable
# in admin) override these defaults.
SLUICE_POOLS: dict[str, dict[str, Any]] = {
    "default": {"max_concurrency": None, "rate_limit": None, "rate_period": 1.0},
    "llm": {
        "max_concurrency": _env_int("SLUICE_LLM_CONCURRENCY", 8, low=0, high=100_000) or None,
        "rate_limit": _env_int("SLUICE_LLM_RATE_LIMIT", 0, low=0, high=10**9) or None,
        "rate_period": _env_number("SLUICE_LLM_RATE_PERIOD", 60.0, low=0.001, high=366 * 86400),
    },
}

# --- Reviews (gates, reviewer queue) ----------------------------------------------------------
# Open gates per queue page; the queue is paginated so its cost does not grow with the backlog.
SLUICE_REVIEW_PAGE_SIZE = _env_int("SLUICE_REVIEW_PAGE_SIZE", 50, low=1, high=1000)
# Seconds between two refreshes of the live queue (paused while the tab is hidden).
SLUICE_REVIEW_POLL_SECONDS = _env_number("SLUICE_REVIEW_POLL_SECONDS", 4.0, low=0.5, high=3600)
# Push (docs/reviews.md, "Live updates"): on PostgreSQL the queue and gate pages hear of gate
# changes through Server-Sent Events fed by LISTEN/NOTIFY, and poll only while that stream is
# down. Off (0), or on SQLite, they poll. The listener needs a session-level connection: behind
# a transaction-pooling PgBouncer, point SLUICE_PUSH_DATABASE_URL at PostgreSQL directly; with
# SLUICE_PGBOUNCER=1 and no such URL, push is off (a LISTEN through the pooler hears nothing).
SLUICE_PUSH_DATABASE_URL = env.str("SLUICE_PUSH_DATABASE_URL", default="")
SLUICE_REVIEW_PUSH = _env_bool(
    "SLUICE_REVIEW_PUSH", not (SLUICE_PGBOUNCER and not SLUICE_PUSH_DATABASE_URL)
)
# A comment line this often keeps proxies from closing an idle stream and finds closed tabs.
SLUICE_SSE_HEARTBEAT_SECONDS = _env_number("SLUICE_SSE_HEARTBEAT_SECONDS", 15.0, low=1, high=3600)
# A stream ends after this long; the browser reconnects and the view checks who is asking again.
SLUICE_SSE_MAX_SECONDS = _env_number("SLUICE_SSE_MAX_SECONDS", 300.0, low=1, high=86400)
# How long the browser waits before reconnecting after a stream ended.
SLUICE_SSE_RETRY_SECONDS = _env_number("SLUICE_SSE_RETRY_SECONDS", 2.0, low=0.1, high=3600)
# At most this many open streams per web process (each holds a server thread); past it a page
# is answered 204 and polls instead.
SLUICE_SSE_MAX_STREAMS = _env_int("SLUICE_SSE_MAX_STREAMS", 200, low=0, high=100_000)
# The expiry sweep closes due gates this many per transaction, at most this many batches a run.
SLUICE_GATE_EXPIRY_BATCH = _env_int("SLUICE_GATE_EXPIRY_BATCH", 1000, low=1, high=10**6)
SLUICE_GATE_EXPIRY_MAX_BATCHES = _env_int("SLUICE_GATE_EXPIRY_MAX_BATCHES", 100, low=1, high=10**6)
# When this many runs or more wake at once, they are resumed in messages of this many runs.
SLUICE_GATE_RESUME_CHUNK = _env_int("SLUICE_GATE_RESUME_CHUNK", 50, low=1, high=100_000)
# Members of these groups see every run of their tenant; other users see only the runs they
# started or that have a gate of one of their groups (staff see all; docs/security.md).
SLUICE_RUN_VIEWER_GROUPS = env.list("SLUICE_RUN_VIEWER_GROUPS", default=["reviewers"])

# --- Reviewer notifications (reviews.notifications; docs/reviews.md) ---------------------------
# E-mail goes through Django's mail (the default mailer of MAILERS), configured by one URL,
# parsed by django-environ's email_url: smtp+tls://user:password@mail.example.com:587,
# smtp+ssl://…:465, consolemail:// (the default: print to the worker's log), memorymail://
# (in memory), dummymail:// (drop everything).


def _email_config(url: str) -> dict[str, object]:
    """django-environ's reading of ``EMAIL_URL``, or a clear startup error naming the variable
    (without echoing the URL: it may hold the SMTP password)."""
    try:
        return dict(environ.Env.email_url_config(url))
    except (ValueError, ImproperlyConfigured):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        what = f"its scheme {scheme[:20]!r}" if scheme else "it"
        raise ImproperlyConfigured(
            f"EMAIL_URL is not a mail URL Sluice can use ({what} or its port is wrong): give "
            "smtp://, smtp+tls://, smtp+ssl:// (host, optional numeric port, user:password@), "
            "consolemail://, filemail://, memorymail:// or dummymail://"
        ) from None


_email: dict[str, Any] = _email_config(env("EMAIL_URL", default="consolemail://"))
_email_options: dict[str, object] = {}
if _email["EMAIL_BACKEND"].endswith(".smtp.EmailBackend"):
    _email_options = {
        "host": _email.get("EMAIL_HOST"),
        "port": _email.get("EMAIL_PORT"),
        "username": _email.get("EMAIL_HOST_USER"),
        "password": _email.get("EMAIL_HOST_PASSWORD"),
        "use_tls": _email.get("EMAIL_USE_TLS"),
        "use_ssl": _email.get("EMAIL_USE_SSL"),
        "timeout": _env_number("EMAIL_TIMEOUT", 10.0, low=0.1, high=3600),
    }
elif _email["EMAIL_BACKEND"].endswith(".filebased.EmailBackend"):
    _email_options = {"file_path": _email.get("EMAIL_FILE_PATH") or str(VAR_DIR / "mail")}
MAILERS = {
    "default": {
        # SMTP with a deadline on the whole attempt (workflows/mail.py); the others as named.
        "BACKEND": (
            "workflows.mail.SMTPBackend"
            if _email["EMAIL_BACKEND"].endswith(".smtp.EmailBackend")
            else _email["EMAIL_BACKEND"]
        ),
        "OPTIONS": {k: v for k, v in _email_options.items() if v is not None and v != ""},
    }
}
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Sluice <sluice@localhost>")
# The absolute address of this Sluice, for links in messages (no trailing slash).
SLUICE_BASE_URL = env("SLUICE_BASE_URL", default="http://127.0.0.1:8000").rstrip("/")
# Remind reviewers of an open gate when this fraction of its time is gone (0 turns it off).
SLUICE_REVIEW_REMINDER_AT = _env_number("SLUICE_REVIEW_REMINDER_AT", 0.75, low=0)
if not SLUICE_REVIEW_REMINDER_AT < 1:  # 75 meaning 75 % must not turn it off
    raise ImproperlyConfigured(
        f"SLUICE_REVIEW_REMINDER_AT is {SLUICE_REVIEW_REMINDER_AT}; it must be a fraction of "
        "the gate's time, 0 (no reminders) or more and below 1, e.g. 0.75"
    )
# Group chat channels: "group=https://hooks.slack.com/…,leads=https://…" (Slack-compatible
# incoming webhooks). They hear of their group's gates opening, reminders and escalations.
SLUICE_NOTIFY_GROUP_WEBHOOKS = _env_dict(
    "SLUICE_NOTIFY_GROUP_WEBHOOKS", "group=https://hooks.example.com/…", echo=False
)
# Minutes a group channel gathers events into one digest (0: one message per event).
SLUICE_NOTIFY_GROUP_DIGEST_MINUTES = _env_int(
    "SLUICE_NOTIFY_GROUP_DIGEST_MINUTES", 0, low=0, high=7 * 24 * 60
)
# Hand immediate notifications to a worker right after commit (the outbox beat sends them
# anyway, every 5 s).
SLUICE_NOTIFY_DISPATCH_ON_COMMIT = _env_bool("SLUICE_NOTIFY_DISPATCH_ON_COMMIT", True)
# Seconds an outbox delivery claim lasts before another deliverer may take the row over (a
# delivery killed mid-way is retried after this, with the same idempotency key).
SLUICE_OUTBOX_CLAIM_SECONDS = _env_number("SLUICE_OUTBOX_CLAIM_SECONDS", 60.0, low=1, high=86400)

# --- JSON API, API keys and completion webhooks ------------------------------------------------
# django-ninja as an app: /api/docs then serves its vendored Swagger UI (no CDN).
INSTALLED_APPS += ["ninja"]
# Requests each API key may make per period (a key's own ``rate_limit`` overrides the number),
# counted in the broker's Redis (on the key's row without one; workflows/keys.py).
SLUICE_API_RATE_LIMIT = _env_int("SLUICE_API_RATE_LIMIT", 600, low=0, high=2**31 - 1)
SLUICE_API_RATE_PERIOD = _env_number("SLUICE_API_RATE_PERIOD", 60.0, low=0.001, high=366 * 86400)
# Each web process remembers a key it authenticated this long, so a deactivated, rotated or
# edited key keeps working on other processes for at most this many seconds (0: look every key
# up on every request).
SLUICE_API_KEY_CACHE_SECONDS = _env_number("SLUICE_API_KEY_CACHE_SECONDS", 5.0, low=0, high=3600)
# Completion webhooks: per-attempt HTTP timeout, and whether callback URLs may point at
# loopback, private, link-local or reserved addresses (off in production: it would let a
# service make Sluice call into its own network; tests turn it on for a local receiver).
SLUICE_WEBHOOK_TIMEOUT = _env_number("SLUICE_WEBHOOK_TIMEOUT", 10.0, low=0.1, high=3600)
SLUICE_WEBHOOK_ALLOW_PRIVATE = _env_bool("SLUICE_WEBHOOK_ALLOW_PRIVATE", False)
# Networks (CIDR, comma separated) the callback guard counts as public although they are not,
# e.g. a partner reached over a private link. Tests use 127.0.0.2/32 for a "public" receiver.
SLUICE_WEBHOOK_TREAT_AS_PUBLIC = env.list("SLUICE_WEBHOOK_TREAT_AS_PUBLIC", default=[])
# Signs webhooks of runs started without an API key (from Python, say). Empty: derived from
# SECRET_KEY.
SLUICE_WEBHOOK_SECRET = env("SLUICE_WEBHOOK_SECRET", default="")
# Deliver a webhook right after the run's transaction commits instead of waiting for the next
# ``workflows.deliver_outbox`` beat (every 5 s). Either way the outbox row is the truth.
SLUICE_WEBHOOK_DISPATCH_ON_COMMIT = _env_bool("SLUICE_WEBHOOK_DISPATCH_ON_COMMIT", True)

# --- Pipelines and LLM providers ----------------------------------------------------------------
# The model that answers LLM tasks: "offline" (the default: deterministic text analysis, no key,
# no network), "openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest",
# "openai-compatible:<model>@http://host:port/v1", "ollama:llama3.1", "vllm:…", "llamacpp:…".
SLUICE_LLM_MODEL = env("SLUICE_LLM_MODEL", default="offline")
# Per pipeline or per task: "thread_analysis=openai:gpt-4o,support_ticket.grade=anthropic:…".
SLUICE_LLM_MODELS = _env_dict("SLUICE_LLM_MODELS", "pipeline=provider:model or pipeline.task=…")
# Base URL of openai / openai-compatible models that do not name one with "@url".
SLUICE_LLM_BASE_URL = env("SLUICE_LLM_BASE_URL", default="")
# One key for every provider; otherwise OPENAI_API_KEY / ANTHROPIC_API_KEY as usual.
SLUICE_LLM_API_KEY = env("SLUICE_LLM_API_KEY", default="")
# Seconds one provider request may take; LLM steps time out 15 s later as a backstop.
SLUICE_LLM_TIMEOUT = _env_number("SLUICE_LLM_TIMEOUT", 60.0, low=0.1, high=86400)
# Structured output: "tool" (tool calls, widest support), "native" (JSON-schema mode) or
# "prompted" (JSON asked for in the prompt, for servers with neither).
SLUICE_LLM_OUTPUT_MODE = env("SLUICE_LLM_OUTPUT_MODE", default="tool")
# Simulated latency of the offline provider, in seconds (demos; crash tests).
SLUICE_LLM_OFFLINE_LATENCY = _env_number("SLUICE_LLM_OFFLINE_LATENCY", 0.0, low=0, high=3600)
# USD per million tokens, (input, output), by "provider:model", "model" or "provider:*".
# The offline provider and self-hosted OpenAI-compatible servers cost nothing by default.
# Add or override from the environment: SLUICE_LLM_PRICES="openai:gpt-5=1.25/10,…".
SLUICE_LLM_PRICES: dict[str, tuple[float | str, float | str]] = {
    "offline": (0.0, 0.0),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4.1-mini": (0.40, 1.60),
    "openai:gpt-4.1": (2.00, 8.00),
    "anthropic:claude-3-5-haiku-latest": (0.80, 4.00),
    "anthropic:claude-sonnet-4-0": (3.00, 15.00),
    "anthropic:claude-opus-4-0": (15.00, 75.00),
}
for _model, _price in _env_dict("SLUICE_LLM_PRICES", "provider:model=input/output").items():
    _in, _, _out = _price.partition("/")
    # Kept as text: pipelines.llm.pricing.checked_price reads it, so that an entry nobody can
    # read is a system check error (pipelines.E003) naming it, not a crash of every process.
    SLUICE_LLM_PRICES[_model] = (_in.strip(), (_out or _in).strip())
# Per-provider limits: LLM steps of a provider run in its own pool ("llm-openai", …; the
# offline provider uses "llm"), all served by workers of the "llm" queue. Concurrency is across
# all workers; the rate limit is step starts per period. Env: SLUICE_LLM_OPENAI_CONCURRENCY,
# SLUICE_LLM_OPENAI_RATE_LIMIT, SLUICE_LLM_OPENAI_RATE_PERIOD (and ANTHROPIC_, COMPATIBLE_).
for _provider, _concurrency in (("openai", 8), ("anthropic", 4), ("openai-compatible", 2)):
    _key = "SLUICE_LLM_" + _provider.split("-")[-1].upper()
    SLUICE_POOLS[f"llm-{_provider}"] = {
        "max_concurrency": _env_int(f"{_key}_CONCURRENCY", _concurrency, low=0, high=100_000)
        or None,
        "rate_limit": _env_int(f"{_key}_RATE_LIMIT", 0, low=0, high=10**9) or None,
        "rate_period": _env_number(f"{_key}_RATE_PERIOD", 60.0, low=0.001, high=366 * 86400),
        "queue": "llm",
    }
# support_ticket: also e-mail the reply (Django's EMAIL_* settings) when it leaves the outbox;
# off by default, so the demo records the reply on the ticket without a mail server.
SLUICE_SUPPORT_SEND_EMAIL = _env_bool("SLUICE_SUPPORT_SEND_EMAIL", False)
SLUICE_SUPPORT_FROM_EMAIL = env("SLUICE_SUPPORT_FROM_EMAIL", default="support@sluice.invalid")

# --- Content-Security-Policy (Django's built-in CSP support) ----------------------------------
# Scripts are strict: only files served by Sluice itself (static/, vendored htmx and mermaid),
# or an inline block carrying the per-request nonce ({{ csp_nonce }}; no page needs one today).
# No inline event handlers, no eval: base.html turns off htmx's eval and injected indicator
# style, and static/sluice/sluice.js holds the confirm/autosubmit/poll-pause behaviour.
# Styles allow 'unsafe-inline' on purpose (except on the reviewer pages, below): mermaid draws
# graphs (pipelines, start form, run page) as SVG carrying its own <style> element and style
# attributes, the run timeline positions its bars and the admin colours status badges with style
# attributes. A style cannot run code, and every user or LLM text is escaped before it reaches
# a page, so this keeps the protection that matters (no script injection) without forking
# mermaid.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
)
SECURE_CSP: dict[str, list[str]] = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
# The reviewer pages (queue, gate, my decisions), which show LLM output and outside text, draw no
# graph and use no style attribute: there styles are strict too (reviews/views.py applies it).
SLUICE_CSP_REVIEW_PAGES: dict[str, list[str]] = {**SECURE_CSP, "style-src": [CSP.SELF]}

# Single sign-on with OpenID Connect (config.oidc, docs/security.md). Off unless
# OIDC_RP_CLIENT_ID is set; local accounts keep working either way.
OIDC_RP_CLIENT_ID = env("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env("OIDC_RP_CLIENT_SECRET", default="")
# The provider's endpoints: from its discovery document, or each one set explicitly.
OIDC_OP_DISCOVERY_URL = env("OIDC_OP_DISCOVERY_URL", default="")
OIDC_OP_ISSUER = env("OIDC_OP_ISSUER", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = env("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = env("OIDC_RP_SCOPES", default="openid email profile")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = _env_int("OIDC_TIMEOUT", 10, low=1, high=600)
OIDC_CREATE_USER = True
LOGIN_REDIRECT_URL_FAILURE = "/accounts/login/?sso=failed"
SLUICE_OIDC_PROVIDER_NAME = env("SLUICE_OIDC_PROVIDER_NAME", default="single sign-on")
SLUICE_OIDC_LEEWAY_SECONDS = _env_int("SLUICE_OIDC_LEEWAY_SECONDS", 30, low=0, high=3600)
# Claim mapping: provider group → Django group ("idp-name=group,same-name"); groups the map
# does not name are ignored. The tenant claim → TenantMembership, from SLUICE_OIDC_TENANTS
# only when that list is set. Staff only when SLUICE_OIDC_STAFF_CLAIM holds
# SLUICE_OIDC_STAFF_VALUE; never superuser.
SLUICE_OIDC_GROUPS_CLAIM = env("SLUICE_OIDC_GROUPS_CLAIM", default="groups")
SLUICE_OIDC_GROUP_MAP = env("SLUICE_OIDC_GROUP_MAP", default="")
SLUICE_OIDC_TENANT_CLAIM = env("SLUICE_OIDC_TENANT_CLAIM", default="tenant")
SLUICE_OIDC_TENANTS = env.list("SLUICE_OIDC_TENANTS", default=[])
SLUICE_OIDC_STAFF_CLAIM = env("SLUICE_OIDC_STAFF_CLAIM", default="")
SLUICE_OIDC_STAFF_VALUE = env("SLUICE_OIDC_STAFF_VALUE", default="")
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
if OIDC_RP_CLIENT_ID:
    AUTHENTICATION_BACKENDS.append("config.oidc.SluiceOIDCBackend")
