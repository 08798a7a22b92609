"""Push: committed gate changes → PostgreSQL NOTIFY → the web process's one listener → the
Server-Sent Events stream of each open page that may hear of them (reviews/push.py).

The integration tests run on PostgreSQL (LISTEN/NOTIFY); the fallback tests run everywhere.
Browser tests (latency with 20 open queue pages, gate pages, polling fallback):
tests/reviews/test_browser_push.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import http.client
import json
import queue
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.test import AsyncClient, Client
from django.utils import timezone

from reviews import push
from reviews.models import Gate
from reviews.services import claim_gate, decide_gate, release_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows.models import TenantMembership

pytestmark = [pytest.mark.django_db(transaction=True)]
integration = pytest.mark.integration


def heard(sub: push.Subscriber, wait: float = 5.0) -> list[push.Notice]:
    """What reached ``sub`` within ``wait`` seconds of the first notice (or nothing)."""
    out: list[push.Notice] = []
    try:
        note = sub.inbox.get(timeout=wait)
        while note is not None:
            out.append(note)
            note = sub.inbox.get(timeout=0.3)
    except queue.Empty:
        pass
    return [n for n in out if n.kind != "sync"]


def listening(*users: Any) -> list[push.Subscriber]:
    subs = [push.hub.subscribe(push.audience_for(u)) for u in users]
    assert push.hub.listening.wait(10), "the gate listener never started listening"
    for sub in subs:
        heard(sub, wait=0.3)  # the listener's first sync
    return subs


@integration
def test_committed_gate_changes_reach_exactly_who_may_see_them(bell: Bell, people: People) -> None:
    acme = User.objects.create_user("acme-ann", password="pw-acme-ann-123")
    acme.groups.add(Group.objects.get(name="reviewers"))
    TenantMembership.objects.create(user=acme, tenant="acme")
    ana, olga, sam, lea, other_tenant = listening(
        people.ana, people.olga, people.sam, people.lea, acme
    )

    gate = open_gate(bell)
    opened = [(n.kind, n.id) for n in heard(ana)]
    assert opened == [("opened", gate.pk)]
    assert [(n.kind, n.id) for n in heard(sam)] == [("opened", gate.pk)]  # staff: every gate
    # Another group, another tenant (same group name), a group it has not escalated to: nothing.
    assert heard(olga, 0.5) == [] and heard(other_tenant, 0.5) == [] and heard(lea, 0.5) == []

    claim_gate(gate.pk, people.ben)
    release_gate(gate.pk, people.ben)
    kinds = [(n.kind, n.id) for n in heard(ana)]
    assert kinds == [("claimed", gate.pk), ("released", gate.pk)]

    # Nothing of the gate's content travels: only what decides who hears it.
    note = heard(sam)[0]
    assert (note.group, note.tenant, note.escalated_to) == ("reviewers", "", "")
    assert json.loads(note.event().split("data: ", 1)[1]) == {"id": gate.pk, "kind": "claimed"}

    # A rolled-back change announces nothing: NOTIFY is sent on commit only.
    with pytest.raises(RuntimeError), transaction.atomic():
        Gate.objects.filter(pk=gate.pk).update(claimed_by=people.ana, claimed_at=timezone.now())
        raise RuntimeError("roll back")
    assert heard(ana, 0.7) == []
    # A write that changes no status, claim or escalation announces nothing either.
    Gate.objects.filter(pk=gate.pk).update(comment="")
    assert heard(ana, 0.5) == []

    # Escalation widens who hears: the escalation group, same tenant only.
    Gate.objects.filter(pk=gate.pk).update(escalate_to="leads", escalated_at=timezone.now())
    assert [(n.kind, n.id) for n in heard(lea)] == [("escalated", gate.pk)]
    assert heard(other_tenant, 0.3) == []
    heard(ana, 0.3)
    heard(sam, 0.3)

    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    assert [(n.kind, n.id) for n in heard(ana)] == [("decided", gate.pk)]
    assert [(n.kind, n.id) for n in heard(lea)] == [("decided", gate.pk)]
    assert heard(olga, 0.3) == []


@integration
def test_a_statement_changing_many_gates_sends_one_notice_everyone_hears(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    ana, olga = listening(people.ana, people.olga)
    heard(ana, 0.5)
    fields = {
        f.attname: getattr(gate, f.attname)
        for f in Gate._meta.concrete_fields
        if f.attname not in ("id", "step_id")
    }
    # One INSERT of 150 gates (step is one-to-one: give each clone a journal row of its own).
    steps = []
    for i in range(150):
        step = copy.copy(gate.step)
        step.pk = None
        step.position = 1000 + i
        steps.append(step)
    steps = type(gate.step).objects.bulk_create(steps)
    Gate.objects.bulk_create([Gate(**fields, step=s) for s in steps])
    assert [n.kind for n in heard(ana)] == ["many"]
    assert [n.kind for n in heard(olga)] == ["many"]  # names no gate: everyone refreshes
    Gate.objects.filter(run_id=gate.run_id).update(deadline=timezone.now() - timedelta(seconds=1))
    assert heard(ana, 0.5) == []  # a deadline is not a change pages show


# --- the stream over HTTP --------------------------------------------------------------------


OPEN: list[Stream] = []


@pytest.fixture(autouse=True)
def _close_streams() -> Any:
    yield
    while OPEN:
        OPEN.pop().close()


class Stream:
    """A raw event-stream reader against the live server (what an EventSource does)."""

    def __init__(self, base: str, user: Any, path: str = "/reviews/events/") -> None:
        OPEN.append(self)
        client = Client()
        client.force_login(user)
        cookie = client.cookies["sessionid"].value
        url = urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        self.conn.request("GET", path, headers={"Cookie": f"sessionid={cookie}"})
        self.response = self.conn.getresponse()
        self.buffer = b""

    def frame(self) -> str:
        """The next frame (up to a blank line), or "" at the end of the stream."""
        while b"\n\n" not in self.buffer:
            chunk = self.response.read1(4096)
            if not chunk:
                return ""
            self.buffer += chunk
        frame, self.buffer = self.buffer.split(b"\n\n", 1)
        return frame.decode()

    def event(self, sync: bool = False) -> dict[str, Any]:
        """The next ``gate`` event's data, skipping heartbeats and (unless ``sync``) the
        refreshes the listener sends when it (re)connects."""
        while True:
            frame = self.frame()
            assert frame, "the stream ended"
            if frame.startswith("event: gate"):
                data = dict(json.loads(frame.split("data: ", 1)[1]))
                if sync or data["kind"] != "sync":
                    return data

    def close(self) -> None:
        self.response.close()
        self.conn.close()


@integration
def test_the_stream_sends_ids_and_kinds_to_the_queue_and_ends_with_a_closed_gate(
    live_server: Any, bell: Bell, people: People, settings: Any
) -> None:
    settings.SLUICE_SSE_HEARTBEAT_SECONDS = 0.3
    gate = open_gate(bell)
    q = Stream(live_server.url, people.ana)
    assert q.response.status == 200
    assert q.response.getheader("Content-Type", "").startswith("text/event-stream")
    assert q.response.getheader("X-Accel-Buffering") == "no"
    assert "no-cache" in q.response.getheader("Cache-Control", "")
    assert q.frame().startswith("retry: ")
    assert q.event(sync=True) == {"id": None, "kind": "sync"}  # each stream starts with a refresh
    page = Stream(live_server.url, people.ben, f"/reviews/events/?gate={gate.pk}")
    assert page.response.status == 200 and page.event(sync=True)["kind"] == "sync"
    assert push.hub.listening.wait(10)
    time.sleep(0.2)
    claim_gate(gate.pk, people.ben)
    assert q.event() == {"id": gate.pk, "kind": "claimed"}
    assert page.event() == {"id": gate.pk, "kind": "claimed"}
    assert ": ping" in q.frame()  # heartbeat while nothing happens
    other = open_gate(bell, title="Another one")
    assert q.event() == {"id": other.pk, "kind": "opened"}
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    assert q.event() == {"id": gate.pk, "kind": "decided"}
    # The gate page's stream hears only its gate, then says bye and ends (sse-close="bye").
    assert page.event() == {"id": gate.pk, "kind": "decided"}
    assert page.frame() == "event: bye\ndata: closed"
    assert page.frame() == ""
    q.close()
    page.close()


@integration
def test_streams_end_when_the_server_stops_and_after_their_lifetime(
    live_server: Any, people: People, settings: Any
) -> None:
    a = Stream(live_server.url, people.ana)
    assert a.event(sync=True)["kind"] == "sync"
    assert push.hub.listening.wait(10) and push.hub.count() == 1
    started = time.monotonic()
    push.hub.stop()  # what shutdown calls: every open stream ends at once
    while a.frame():
        pass
    assert time.monotonic() - started < 3
    assert push.hub.count() == 0
    a.close()
    settings.SLUICE_SSE_MAX_SECONDS = 0.5
    b = Stream(live_server.url, people.ana)
    assert b.event(sync=True)["kind"] == "sync"
    started = time.monotonic()
    while b.frame():
        pass
    assert time.monotonic() - started < 3  # ended by itself; the browser reconnects
    b.close()
    deadline = time.monotonic() + 3
    while push.hub.count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert push.hub.count() == 0


@integration
def test_a_process_serves_at_most_its_stream_limit_then_pages_poll(
    live_server: Any, bell: Bell, people: People, settings: Any
) -> None:
    settings.SLUICE_SSE_MAX_STREAMS = 1
    a = Stream(live_server.url, people.ana)
    assert a.event(sync=True)["kind"] == "sync"
    b = Stream(live_server.url, people.ben)
    assert b.response.status == 204  # EventSource stops; the page keeps polling
    a.close()
    b.close()


@integration
def test_who_may_open_a_stream(live_server: Any, bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    assert Stream(live_server.url, people.otto).response.status == 403  # in no review group
    olga = Stream(live_server.url, people.olga, f"/reviews/events/?gate={gate.pk}")
    assert olga.response.status == 404  # a gate of another group does not exist for her
    for bad in ("abc", "-1", "١", "9" * 30, ""):
        s = Stream(live_server.url, people.ana, f"/reviews/events/?gate={quote(bad)}")
        assert s.response.status == 404, bad
        s.close()
    url = urlsplit(live_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/reviews/events/")
    anonymous = conn.getresponse()
    assert anonymous.status == 302 and "/accounts/login/" in anonymous.getheader("Location", "")
    anonymous.close()
    conn.close()
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    closed = Stream(live_server.url, people.ana, f"/reviews/events/?gate={gate.pk}")
    assert closed.response.status == 204  # nothing left to follow


# --- fallback: no push -----------------------------------------------------------------------


def test_without_push_pages_poll_and_the_stream_answers_204(
    bell: Bell, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_PUSH = False
    gate = open_gate(bell)
    c = Client()
    c.force_login(people.ana)
    assert c.get("/reviews/events/").status_code == 204
    assert c.get(f"/reviews/events/?gate={gate.pk}").status_code == 204
    for url in ("/reviews/", f"/reviews/{gate.pk}/"):
        body = c.get(url).content.decode()
        assert "sse-connect" not in body and "hx-sse" not in body
        assert 'hx-trigger="every 4' in body and "data-poll" in body


def test_gunicorns_sync_workers_get_no_stream_their_pages_poll(
    bell: Bell, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync worker serves one request at a time: two open pages holding streams stopped the
    whole site (the shipped gunicorn config). There the stream answers 204 and pages poll."""
    monkeypatch.setattr(push, "push_available", lambda: True)
    c = Client()
    c.force_login(people.ana)
    sync_worker = {"gunicorn.socket": object(), "wsgi.multithread": False}
    assert c.get("/reviews/events/", **sync_worker).status_code == 204
    assert push.hub.count() == 0


def test_with_push_pages_connect_their_stream_and_still_poll_as_fallback(
    bell: Bell, people: People, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(push, "push_available", lambda: True)
    gate = open_gate(bell)
    c = Client()
    c.force_login(people.ana)
    queue_page = c.get("/reviews/").content.decode()
    assert 'hx-ext="sse" sse-connect="/reviews/events/" data-push' in queue_page
    assert "sse:gate" in queue_page and 'hx-trigger="every 4' in queue_page
    assert "/static/django_htmx/ext/hx-sse-2" in queue_page
    gate_page = c.get(f"/reviews/{gate.pk}/").content.decode()
    assert f'sse-connect="/reviews/events/?gate={gate.pk}" sse-close="bye"' in gate_page
    decide_gate(gate.pk, outcome="approve", actor="ben", user=people.ben)
    assert "sse-connect" not in c.get(f"/reviews/{gate.pk}/").content.decode()


def test_the_gate_status_sends_the_panel_when_the_claim_changed(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    c = Client()
    c.force_login(people.ana)
    htmx = {"HTTP_HX_REQUEST": "true"}
    assert c.get(f"/reviews/{gate.pk}/status/?claim=", **htmx).status_code == 204
    claim_gate(gate.pk, people.ben)
    changed = c.get(f"/reviews/{gate.pk}/status/?claim=", **htmx)
    body = changed.content.decode()
    assert changed.status_code == 200
    assert 'id="decision-panel" class="card rv-decision"' in body and "ben" in body
    assert f'id="gate-claim" name="claim" value="{people.ben.pk}"' in body
    assert 'name="outcome"' not in body  # ben holds it: ana cannot decide now
    assert c.get(f"/reviews/{gate.pk}/status/?claim={people.ben.pk}", **htmx).status_code == 204
    assert c.get(f"/reviews/{gate.pk}/status/", **htmx).status_code == 204  # old pollers


def test_under_asgi_the_stream_waits_on_the_event_loop(
    people: People, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI the view streams an async iterator (a sync one would be read to its end
    before anything is sent); notices from the listener thread reach it through the loop."""
    monkeypatch.setattr(push, "push_available", lambda: True)
    monkeypatch.setattr(push.hub, "_ensure_listener", lambda: None)  # notices come from here
    settings.SLUICE_SSE_HEARTBEAT_SECONDS = 0.2

    async def main() -> None:
        client = AsyncClient()
        await client.aforce_login(people.ana)
        response = await client.get("/reviews/events/")
        assert response.status_code == 200 and response.is_async
        frames = aiter(response.streaming_content)
        assert (await anext(frames)).startswith(b"retry: ")
        assert b'"kind": "sync"' in await anext(frames)
        notices = [
            push.Notice(kind="claimed", id=7, group="legal"),  # not hers: never sent
            push.Notice(kind="claimed", id=8, group="reviewers"),
        ]
        threading.Timer(0.05, lambda: [push.hub.publish(n) for n in notices]).start()
        assert await anext(frames) == b'event: gate\ndata: {"id": 8, "kind": "claimed"}\n\n'
        assert await anext(frames) == b": ping\n\n"
        push.hub.stop()  # shutdown ends it
        with pytest.raises(StopAsyncIteration):
            await anext(frames)

    # In a thread of its own: after a browser test, Playwright's event loop may still be running
    # in this one, and asyncio.run() refuses to start inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()
    assert push.hub.count() == 0
