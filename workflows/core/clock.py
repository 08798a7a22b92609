"""The engine's clock: this process's clock, corrected to the database's.

Leases, sleeps, retry backoffs and doorbell graces are times written by one process and judged
by another: a worker's lease runs out at its ``expires_at``, read by whichever worker sweeps.
With each process on its own clock, a worker whose clock is a few seconds off the others' made
live leases look expired (the sweep ran a running step a second time) or kept a dead one for
the whole difference. So the engine reads the time from here: the host's clock plus the
offset to PostgreSQL's clock, which every process shares, measured from one round trip when a
process first asks for the time and again once a minute (the lease heartbeat and the sweep
ask too, so an idle process stays measured).

A process whose clock is off by more than ``WARN_SECONDS`` logs a warning when it measures:
the engine's times are corrected, but pages, logs and the web's own timestamps use the host's
clock, so fix it (NTP). SQLite (the embedded default) runs on one machine: no offset.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

log = logging.getLogger(__name__)

# Measure again after this long (seconds).
REFRESH_SECONDS = 60.0
# A round trip slower than this measures nothing (its error is up to half of it).
MAX_ROUND_TRIP = 0.5
# An offset this large (seconds) is logged: the host's clock needs fixing.
WARN_SECONDS = 1.0

_lock = threading.Lock()
_offset = timedelta(0)
_measured: float | None = None  # time.monotonic() of the last measurement


def now() -> datetime:
    """The current time on the database's clock (aware, UTC). The offset is measured on first
    use in each process and again once it is older than ``REFRESH_SECONDS``: every process of
    a host must agree (a deliverer that never measured took over a measured one's claim)."""
    if _measured is None or time.monotonic() - _measured >= REFRESH_SECONDS:
        refresh()
    return timezone.now() + _offset


def offset() -> timedelta:
    """The database's clock minus this process's, as last measured (0 before that)."""
    return _offset


def measure() -> timedelta | None:
    """The database's clock minus this process's, from one round trip on this thread's
    connection; None when it cannot be told (not PostgreSQL, a slow round trip)."""
    if connection.vendor != "postgresql":
        return None
    # On the driver's own connection: not a query of the caller's (a page that counts its
    # queries, a test's CaptureQueriesContext), whichever statement first asked for the time.
    connection.ensure_connection()
    with connection.connection.cursor() as cur:
        before = timezone.now()  # the clock the engine's times come from
        cur.execute("SELECT clock_timestamp()")
        after = timezone.now()
        row = cur.fetchone()
    trip = after - before
    if row is None or trip.total_seconds() > MAX_ROUND_TRIP:
        return None
    return row[0] - (before + trip / 2)  # type: ignore[no-any-return]


def refresh(force: bool = False) -> timedelta:
    """Measure the offset again if the last measurement is older than ``REFRESH_SECONDS``
    (or ``force``); the offset in use. A failure keeps the last one."""
    global _offset, _measured
    mono = time.monotonic()
    with _lock:
        if not force and _measured is not None and mono - _measured < REFRESH_SECONDS:
            return _offset
        _measured = mono  # one measurement at a time, and none again for a while on failure
    try:
        found = measure()
    except Exception:
        log.warning("could not read the database's clock", exc_info=True)
        return _offset
    if found is None:
        return _offset
    _offset = found
    seconds = found.total_seconds()
    if abs(seconds) >= WARN_SECONDS:
        log.warning(
            "this host's clock is %.1f s %s the database's: the engine corrects its times by "
            "it, but fix the host's clock (NTP)",
            abs(seconds),
            "behind" if seconds > 0 else "ahead of",
        )
    return _offset


def reset() -> None:
    """Forget the measured offset (tests)."""
    global _offset, _measured
    with _lock:
        _offset, _measured = timedelta(0), None


__all__ = ["now", "offset", "refresh", "reset"]
