"""Live gate changes for the reviewer pages: PostgreSQL NOTIFY → one listener → Server-Sent Events.

The database announces every committed gate change on the ``sluice_gates`` channel (a trigger,
``reviews/migrations/0006_gate_change_notify.py``). Each web process holds **one** listening
connection, in one thread (``Hub``), and fans every notice out to the in-memory queues of the
event streams it serves: a hundred open queue pages cost one database connection, not a hundred.
The stream view (``views.gate_events``) holds no database connection while it waits.

A notice only says "gate 12 was claimed", with what is needed to decide who may hear of it
(group, escalation group, tenant). A page that hears of a change re-fetches its own fragment
through the usual authorized partial views, so nothing of a gate's content travels here, and a
notice a page should not have heard would show it nothing.

Missed notices are covered by refreshing, not by replay: every stream starts with a ``sync``
event (the page re-fetches once, which also covers changes between rendering the page and
subscribing), and when the listener had to reconnect to the database it sends ``sync`` to every
stream. Where there is no push (SQLite, ``SLUICE_REVIEW_PUSH=0``, a failed stream) the pages
poll (docs/reviews.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections

log = logging.getLogger(__name__)

CHANNEL = "sluice_gates"
# Kinds that close a gate: a gate page's stream ends after telling its page.
CLOSING = frozenset({"decided", "expired", "canceled"})
# Kinds every stream hears, whoever it belongs to: they name no gate.
EVERYONE = frozenset({"sync", "many"})


def push_available() -> bool:
    """Push works on PostgreSQL (LISTEN/NOTIFY) when not turned off; elsewhere pages poll."""
    return bool(settings.SLUICE_REVIEW_PUSH) and connections["default"].vendor == "postgresql"


@dataclass(frozen=True)
class Notice:
    """One committed gate change, as the trigger announced it."""

    kind: str
    id: int | None = None
    group: str = ""
    escalated_to: str = ""
    tenant: str = ""

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        try:
            data = json.loads(payload)
            return cls(
                kind=str(data["kind"]),
                id=int(data["id"]) if data.get("id") is not None else None,
                group=str(data.get("group") or ""),
                escalated_to=str(data.get("escalated_to") or ""),
                tenant=str(data.get("tenant") or ""),
            )
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed %s notice: %.200r", CHANNEL, payload)
            return None

    def event(self) -> str:
        """The SSE frame: an id and a kind, nothing of the gate's content."""
        data = json.dumps({"id": self.id, "kind": self.kind})
        return f"event: gate\ndata: {data}\n\n"


SYNC = Notice(kind="sync")


@dataclass(frozen=True)
class Audience:
    """Who a stream belongs to, read once when it opens (the same rule as
    ``services.gates_visible_to``: an operator sees every gate; a reviewer the gates of their
    groups, and those escalated to one of them, on runs of their tenant), and optionally the
    one gate its page shows."""

    every_gate: bool
    groups: frozenset[str]
    tenant: str
    gate_id: int | None = None

    def hears(self, notice: Notice) -> bool:
        if notice.kind in EVERYONE:
            return True
        if self.gate_id is not None and notice.id != self.gate_id:
            return False
        if self.every_gate:
            return True
        if notice.tenant != self.tenant:
            return False
        return notice.group in self.groups or (
            bool(notice.escalated_to) and notice.escalated_to in self.groups
        )


def audience_for(user: Any, gate_id: int | None = None) -> Audience:
    """The audience of a stream opened by ``user`` (a reviewer; the view checked that)."""
    from reviews import services
    from workflows import access

    return Audience(
        every_gate=services.sees_every_gate(user),
        groups=frozenset(services.review_groups(user)),
        tenant=access.user_tenant(user),
        gate_id=gate_id,
    )


class Subscriber:
    """One open stream's inbox. ``None`` in it means "stop now" (shutdown).

    A stream served by a thread (WSGI) waits on a thread-safe queue; one served by an event
    loop (ASGI) on an asyncio queue, which the listener thread fills through the loop."""

    def __init__(self, audience: Audience, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.audience = audience
        self.loop = loop
        self.inbox: queue.SimpleQueue[Notice | None] = queue.SimpleQueue()
        self.ainbox: asyncio.Queue[Notice | None] = asyncio.Queue()

    def offer(self, notice: Notice) -> None:
        if self.audience.hears(notice):
            self.deliver(notice)

    def deliver(self, item: Notice | None) -> None:
        if self.loop is None:
            self.inbox.put(item)
            return
        try:
            self.loop.call_soon_threadsafe(self.ainbox.put_nowait, item)
        except RuntimeError:  # The loop closed: the stream is gone.
            pass


class Hub:
    """This process's listener thread and the streams it feeds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid: int | None = None
        self._conn: Any = None
        # Set once the listener's LISTEN is in place (tests wait for it).
        self.listening = threading.Event()

    # --- streams ---------------------------------------------------------------------------

    def subscribe(
        self, audience: Audience, loop: asyncio.AbstractEventLoop | None = None
    ) -> Subscriber:
        sub = Subscriber(audience, loop)
        with self._lock:
            self._subscribers.add(sub)
        self._ensure_listener()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, notice: Notice) -> None:
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            sub.offer(notice)

    # --- the listener ----------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        pid = os.getpid()
        thread = self._thread
        if thread is not None and self._pid == pid and thread.is_alive():
            return
        with self._lock:
            thread = self._thread
            if thread is not None and self._pid == pid and thread.is_alive():
                return
            self._stop = threading.Event()
            self.listening.clear()
            self._pid = pid
            self._thread = threading.Thread(
                target=self._listen, args=(self._stop,), name="sluice-gate-listener", daemon=True
            )
            self._thread.start()

    def _listen(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                conn = _connect()
            except Exception:
                log.exception("gate listener: cannot connect; retrying in %.1f s", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self._conn = conn
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                backoff = 0.5
                # Whatever happened while nobody listened is unknown: every page refreshes.
                self.publish(SYNC)
                while not stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        notice = Notice.parse(note.payload)
                        if notice is not None:
                            self.publish(notice)
            except Exception:
                if not stop.is_set():
                    log.exception("gate listener: connection lost; reconnecting")
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
            finally:
                self.listening.clear()
                self._conn = None
                try:
                    conn.close()
                except Exception:  # Closing a broken connection may fail too.
                    pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the listener (closing its connection) and end every open stream at once:
        server shutdown, and after each test so the test database can be dropped. The next
        subscriber starts a new listener."""
        self._stop.set()
        with self._lock:
            subs = list(self._subscribers)
            self._subscribers.clear()
            thread = self._thread
            self._thread = None
        for sub in subs:
            sub.deliver(None)
        if thread is not None and thread.is_alive():
            thread.join(timeout=timeout)


def _connect() -> Any:
    """A connection of its own, in autocommit (LISTEN needs no transaction): to
    ``SLUICE_PUSH_DATABASE_URL`` when set (a direct connection past a transaction-pooling
    PgBouncer, which cannot LISTEN), else to the default database."""
    import psycopg

    url = settings.SLUICE_PUSH_DATABASE_URL
    if url:
        return psycopg.connect(url, autocommit=True, application_name="sluice-push")
    s = connections["default"].settings_dict
    params: dict[str, Any] = {
        "dbname": s["NAME"],
        "user": s.get("USER") or None,
        "password": s.get("PASSWORD") or None,
        "host": s.get("HOST") or None,
        "port": s.get("PORT") or None,
    }
    # libpq options such as sslmode pass through; Django's own options do not.
    django_only = {"isolation_level", "server_side_binding", "prepare_threshold", "pool"}
    for key, value in (s.get("OPTIONS") or {}).items():
        if key not in django_only and isinstance(value, str | int):
            params[key] = value
    params = {k: v for k, v in params.items() if v is not None}
    return psycopg.connect(autocommit=True, application_name="sluice-push", **params)


hub = Hub()


def stream(audience: Audience, *, heartbeat: float, lifetime: float) -> Iterator[str]:
    """The body of one event stream: a ``sync`` first, then the notices this subscriber may
    hear, a comment line every ``heartbeat`` seconds (so proxies keep the connection and a
    closed tab is noticed on the next write), until ``lifetime`` has passed (the browser then
    reconnects, and the view checks who is asking again), the server stops, or, for a gate
    page, its gate closed. Subscribes when the server starts sending (before the ``sync``, so
    no change falls between the two), unsubscribes however it ends."""
    deadline = time.monotonic() + lifetime
    sub = hub.subscribe(audience)
    try:
        # How long the browser waits before reconnecting after the stream ends.
        yield f"retry: {int(settings.SLUICE_SSE_RETRY_SECONDS * 1000)}\n\n"
        yield SYNC.event()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                notice = sub.inbox.get(timeout=min(heartbeat, left))
            except queue.Empty:
                yield ": ping\n\n"
                continue
            if notice is None:
                return
            yield notice.event()
            if sub.audience.gate_id is not None and notice.kind in CLOSING:
                # The gate page has what it needs; "bye" tells its EventSource not to reconnect.
                yield "event: bye\ndata: closed\n\n"
                return
    finally:
        hub.unsubscribe(sub)


async def astream(audience: Audience, *, heartbeat: float, lifetime: float) -> AsyncIterator[str]:
    """``stream`` for ASGI servers: the same frames, waiting on the event loop instead of a
    thread (Django would read a synchronous iterator to its end before sending anything)."""
    deadline = time.monotonic() + lifetime
    sub = hub.subscribe(audience, asyncio.get_running_loop())
    try:
        yield f"retry: {int(settings.SLUICE_SSE_RETRY_SECONDS * 1000)}\n\n"
        yield SYNC.event()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                notice = await asyncio.wait_for(sub.ainbox.get(), timeout=min(heartbeat, left))
            except TimeoutError:
                yield ": ping\n\n"
                continue
            if notice is None:
                return
            yield notice.event()
            if sub.audience.gate_id is not None and notice.kind in CLOSING:
                yield "event: bye\ndata: closed\n\n"
                return
    finally:
        hub.unsubscribe(sub)
