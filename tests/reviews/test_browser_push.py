"""Push in a real browser (PostgreSQL LISTEN/NOTIFY → Server-Sent Events → htmx's sse extension).

- 20 open queue pages see every gate that opens, is claimed, released and decided, and the
  test prints how long each page took (median, p95, max): a measurement, not a timed
  assertion (docs/reviews.md quotes it). The polls are set to 10 minutes, so only push can
  deliver within the test.
- A gate page follows claims and closes live, also without polls.
- Fallback: a page whose stream is refused polls; a page whose stream ends reconnects.

Chromium opens at most 6 HTTP/1.1 connections per host, and each page's stream holds one for
as long as it is open (as 20 reviewers' browsers would hold one each): the 20 pages use 20 host
names, all mapped to 127.0.0.1 (``--host-resolver-rules``), each with the same session cookie.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from playwright.sync_api import Browser, BrowserType, ConsoleMessage, Page, expect

from reviews import push
from reviews.models import Gate
from reviews.services import claim_gate, decide_gate, release_gate
from tests.browser import log_in
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

PAGES = 20
ROUNDS = 4
HOSTS = "sluice.test"

# Records, in the page, every change of what its queue shows (gate id → claim holder) with
# the time it happened: the measurement reads the first record after the change was made.
RECORDER = """() => {
  window.__seen = [];
  window.__heard = [];
  document.addEventListener('htmx:sseMessage', () => window.__heard.push(Date.now()));
  const snap = () => {
    const s = {};
    document.querySelectorAll('#queue .rv-row').forEach((r) => {
      const c = r.querySelector('.rv-claim');
      s[r.dataset.gateId] = c ? c.textContent.trim() : '';
    });
    return s;
  };
  let last = JSON.stringify(snap());
  window.__seen.push([Date.now(), JSON.parse(last)]);
  new MutationObserver(() => {
    const now = snap();
    const key = JSON.stringify(now);
    if (key !== last) { last = key; window.__seen.push([Date.now(), now]); }
  }).observe(document.querySelector('main'), {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture
def hosts_browser(
    browser_type: BrowserType, browser_type_launch_args: dict[str, Any]
) -> Iterator[Browser]:
    args = [
        *browser_type_launch_args.get("args", []),
        f"--host-resolver-rules=MAP *.{HOSTS} 127.0.0.1",
    ]
    browser = browser_type.launch(**{**browser_type_launch_args, "args": args})
    yield browser
    browser.close()


def heard_at(page: Page, since_ms: float) -> float | None:
    """When (epoch ms) the page's stream first delivered an event after ``since_ms``."""
    return page.evaluate("(t) => window.__heard.find((x) => x >= t) || null", since_ms)


def seen_at(page: Page, since_ms: float, check: Callable[[dict[str, str]], bool]) -> float | None:
    """When (epoch ms) the page first showed a state passing ``check`` after ``since_ms``."""
    # The records from the last one before since_ms on.
    records = page.evaluate(
        "(t) => window.__seen.filter((r, i, a) => r[0] >= t || (a[i + 1] || [Infinity])[0] >= t)",
        since_ms,
    )
    # The state at since_ms is the last record before it; it may already pass (rare: a
    # change that landed before we started the clock) and then counts as 0.
    before = [r for r in records if r[0] < since_ms]
    if before and check(before[-1][1]):
        return since_ms
    for at, state in records:
        if at >= since_ms and check(state):
            return float(at)
    return None


HEARD: list[float] = []


def measure(
    pages: list[Page],
    change: Callable[[], Any],
    check: Callable[[Any], Callable[..., bool]],
    clock: Callable[[Any], float] | None = None,
) -> list[float]:
    """Make ``change`` and wait until every page shows it; the seconds each page took (and,
    into HEARD, how long until its stream delivered the event), counted from just before the
    change, or from ``clock(result)`` (epoch ms) when that is later."""
    started = time.time() * 1000
    result = change()
    if clock is not None:
        started = max(started, clock(result))
    test = check(result)
    took: dict[int, float] = {}
    deadline = time.monotonic() + 20
    while len(took) < len(pages) and time.monotonic() < deadline:
        time.sleep(0.25)  # the pages time themselves; checking often would only load the CPU
        for i, page in enumerate(pages):
            if i not in took:
                at = seen_at(page, started, test)
                if at is not None:
                    took[i] = (at - started) / 1000
                    heard = heard_at(page, started)
                    if heard is not None:
                        HEARD.append((heard - started) / 1000)
    missing = [i for i in range(len(pages)) if i not in took]
    assert not missing, f"pages {missing} never showed the change"
    return [took[i] for i in range(len(pages))]


def test_twenty_open_queue_pages_see_every_change_pushed(
    bell: Bell, live_server: Any, people: People, settings: Any, hosts_browser: Browser
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600  # only push can deliver within the test
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, f".{HOSTS}"]
    port = urlsplit(live_server.url).port
    client = Client()
    client.force_login(people.ana)
    session = client.cookies["sessionid"].value
    context = hosts_browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    names = [f"p{i}.{HOSTS}" for i in range(PAGES)]
    context.add_cookies(
        [{"name": "sessionid", "value": session, "domain": n, "path": "/"} for n in names]
    )
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    pages = []
    for name in names:
        page = context.new_page()
        page.on("console", on_console)
        page.goto(f"http://{name}:{port}/reviews/")
        pages.append(page)
    for page in pages:
        expect(page.locator("#queue-live[data-push-live]")).to_have_count(1)  # stream open
        page.evaluate(RECORDER)
    assert push.hub.count() == PAGES  # one process, one listener, twenty streams

    by_kind: dict[str, list[float]] = {"open": [], "claim": [], "release": [], "decide": []}
    for r in range(ROUNDS):
        # Counted from the gate's creation, inside the transaction that commits it, not from
        # starting its run (the engine's time, not push's).

        def opening(r: int = r) -> Any:
            return open_gate(bell, title=f"Pushed gate {r}")

        by_kind["open"] += measure(
            pages,
            opening,
            lambda g: lambda s, g=g: str(g.pk) in s,
            clock=lambda g: g.created_at.timestamp() * 1000,
        )
        gate = Gate.objects.get(title=f"Pushed gate {r}")
        gid = str(gate.pk)
        by_kind["claim"] += measure(
            pages,
            lambda pk=gate.pk: claim_gate(pk, people.ben),
            lambda _, gid=gid: lambda s: s.get(gid, "").endswith("ben"),
        )
        by_kind["release"] += measure(
            pages,
            lambda pk=gate.pk: release_gate(pk, people.ben),
            lambda _, gid=gid: lambda s: gid in s and s[gid] == "",
        )
        by_kind["decide"] += measure(
            pages,
            lambda pk=gate.pk: decide_gate(pk, outcome="approve", actor="ben", user=people.ben),
            lambda _, gid=gid: lambda s: gid not in s,
        )
        bell.drain()

    every = sorted(x for xs in by_kind.values() for x in xs)
    assert len(every) == PAGES * ROUNDS * 4  # every page saw every change

    def figures(xs: list[float]) -> str:
        xs = sorted(xs)
        p95 = statistics.quantiles(xs, n=20, method="inclusive")[-1]
        median = statistics.median(xs)
        return f"median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms"

    print(f"\npush latency, {PAGES} open queue pages, {len(every)} page updates: {figures(every)}")
    for kind, xs in by_kind.items():
        print(f"  {kind:8} {figures(xs)}")
    print(f"  event delivered to the page (before its re-fetch): {figures(HEARD)}")
    assert violations == []
    context.close()


def test_a_gate_page_follows_claims_and_closes_without_polling(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    page = viewport
    gate = open_gate(bell, title="Check the refund")
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    expect(page.locator("#gate-live[data-push-live]")).to_have_count(1)
    page.fill("#id_comment", "Looks right to me.")
    claim_gate(gate.pk, people.ben)
    expect(page.get_by_test_id("claimed-by")).to_have_text("ben")
    expect(page.locator("#decision-panel button[name=outcome]")).to_have_count(0)
    expect(page.locator(".rv-activity")).to_contain_text("claimed")
    release_gate(gate.pk, people.ben)
    expect(page.locator("#decision-panel").get_by_role("button", name="Claim")).to_be_visible()
    # The comment typed before survives the panel coming and going.
    expect(page.locator("#id_comment")).to_have_value("Looks right to me.")
    decide_gate(gate.pk, outcome="reject", actor="ben", user=people.ben)
    expect(page.get_by_test_id("closed-banner")).to_contain_text("Already decided by ben")
    expect(page.get_by_test_id("gate-status")).to_have_text("Decided")
    # The page stops listening: the poller is inert and its stream is gone.
    expect(page.locator("#gate-live[hx-get]")).to_have_count(0)
    deadline = time.monotonic() + 5
    while push.hub.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert push.hub.count() == 0


def test_a_page_whose_stream_is_refused_polls_instead(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    settings.SLUICE_SSE_MAX_STREAMS = 0  # every stream is answered 204
    page = viewport
    log_in(page, live_server.url, "ana")
    expect(page.locator("#queue-live[sse-connect]")).to_have_count(1)
    gate = open_gate(bell, title="Seen by polling")
    expect(page.locator(f'#queue .rv-row[data-gate-id="{gate.pk}"]')).to_have_count(1)
    expect(page.locator("#queue-live[data-push-live]")).to_have_count(0)
    assert push.hub.count() == 0


def test_a_page_whose_stream_ends_reconnects_and_catches_up(
    bell: Bell, live_server: Any, viewport: Page, people: People, settings: Any
) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_SSE_RETRY_SECONDS = 0.5
    page = viewport
    log_in(page, live_server.url, "ana")
    expect(page.locator("#queue-live[data-push-live]")).to_have_count(1)
    push.hub.stop()  # the server ends every stream (as a restart would)
    gate = open_gate(bell, title="Opened while the page reconnected")
    # The browser reconnects; the new stream starts with a sync, so the page catches up.
    expect(page.locator(f'#queue .rv-row[data-gate-id="{gate.pk}"]')).to_have_count(1)
    expect(page.locator("#queue-live[data-push-live]")).to_have_count(1)
