"""Shared fixtures: an in-memory doorbell for unit tests, real services for integration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

# Playwright's sync API runs an event loop in the test thread; Django's ORM calls made from
# that thread (fixtures, assertions) are still synchronous and safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import tests.sample_workflows  # noqa: F401  (registers the test workflows)
from tests.support import Bell
from workflows.core import clock


def pytest_configure(config: Any) -> None:
    """The suite speaks plain http to the test client and the live server, with DEBUG off as
    pytest-django sets it: turn off production's https-only defaults (HSTS, redirects, secure
    cookies; tests/test_security_settings.py checks them in a subprocess). Login failure
    counts go to a per-process memory cache, emptied after each test."""
    from django.conf import settings

    settings.SECURE_SSL_REDIRECT = False
    settings.SECURE_HSTS_SECONDS = 0
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    yield
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _forget_api_keys() -> Iterator[None]:
    """Each process remembers the API keys it authenticated for a few seconds
    (workflows.keys): a test's keys, and changes made to them behind Django's back, must not
    leak into the next test."""
    from workflows.keys import forget_keys

    forget_keys()
    yield
    forget_keys()


@pytest.fixture
def skew(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``skew(seconds)``: this host's clock runs ``seconds`` ahead (negative: behind) of the
    database's (the engine's clock, ``workflows.core.clock``); PostgreSQL only."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite is one machine's clock: there is no other to be off from")
    real = timezone.now

    def use(seconds: float) -> None:
        monkeypatch.setattr(timezone, "now", lambda: real() + timedelta(seconds=seconds))
        clock.reset()

    yield use
    clock.reset()


@pytest.fixture
def bell(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bell]:
    """Replace the broker with an in-memory queue; ``bell.drain()`` processes messages."""
    b = Bell()
    monkeypatch.setattr("workflows.core.doorbell.send_advance", b.send_advance)
    monkeypatch.setattr("workflows.core.doorbell.send_step", b.send_step)
    monkeypatch.setattr("workflows.core.doorbell.send_steps", b.send_steps)
    monkeypatch.setattr("workflows.core.doorbell.send_batches", b.send_batches)
    monkeypatch.setattr("workflows.core.doorbell.send_advance_many", b.send_advance_many)
    yield b


@pytest.fixture(autouse=True)
def _stop_heartbeat() -> Iterator[None]:
    """The lease heartbeat thread (and any branch thread) holds its own database connection:
    close them after each test so the test database can be flushed and dropped."""
    yield
    from workflows.core import branches
    from workflows.core.leases import stop_heartbeat

    stop_heartbeat()
    branches.shutdown()  # branch threads hold connections of their own too


@pytest.fixture(autouse=True)
def _stop_gate_listener() -> Iterator[None]:
    """The gate listener (reviews.push) holds its own LISTEN connection and ends every open
    event stream when stopped: stop it after each test, so live-server threads streaming to a
    page end and the test database can be flushed and dropped."""
    yield
    from reviews.push import hub

    hub.stop()


@pytest.fixture
def live(transactional_db: None, tmp_path: Any) -> Iterator[Any]:
    """Real Celery worker/beat processes on the test database (integration tests only).

    ``live.worker()`` and ``live.beat()`` start processes; all are stopped afterwards. The
    worker logs are printed when the test fails.
    """
    from tests.live import LiveProcesses, flush_broker

    flush_broker()
    procs = LiveProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()
        print(procs.logs())


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Drive Debian's chromium (Playwright never downloads a browser here)."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@pytest.fixture
def viewport(page: Any) -> Any:
    """A browser page at the size the screenshots are taken at, with a patient default timeout
    (the suite shares two cores with real worker processes)."""
    page.set_viewport_size({"width": 1360, "height": 900})
    page.set_default_timeout(15_000)
    return page


def services_required() -> bool:
    return os.environ.get("SLUICE_REQUIRE_SERVICES") == "1"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    from django.conf import settings

    on_postgres = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    has_redis = settings.CELERY_BROKER_URL.startswith("redis")
    if on_postgres and has_redis:
        return
    reason = "integration tests need PostgreSQL (DATABASE_URL) and Redis (CELERY_BROKER_URL)"
    for item in items:
        if "integration" in item.keywords:
            if services_required():
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True, run=False))
            else:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Figures measured by tests that ran: HTML form fuzz cases (tests/test_form_fuzz.py), the
    multi-host failover time (tests/workflows/test_multihost.py)."""
    import sys

    multihost = sys.modules.get("tests.workflows.test_multihost")
    if multihost is not None and multihost.FIGURES:
        terminalreporter.write_line(f"multi-host failover: {multihost.FIGURES['summary']}")
    fuzz = sys.modules.get("tests.test_form_fuzz")
    if fuzz is None or not fuzz.CASES:
        return
    by_form = ", ".join(f"{k} {v}" for k, v in sorted(fuzz.CASES.items()))
    statuses = ", ".join(f"{f} {s}: {n}" for (f, s), n in sorted(fuzz.STATUSES.items()))
    terminalreporter.write_line(f"form fuzzing: {sum(fuzz.CASES.values())} requests ({by_form})")
    terminalreporter.write_line(f"form fuzzing statuses: {statuses}")
