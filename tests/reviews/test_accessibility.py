"""Accessibility of the reviewer pages' markup (review K): what screen readers and keyboard users
rely on, checked on the server's HTML. The behaviour in a browser is in test_browser_keyboard.py.

- every aria-describedby names an element on the page (help texts and errors carry the ids);
- the preferences form says one thing about a refused webhook URL, not two;
- the queue is not a live region (its countdowns tick), a status line outside it is; rows, their
  boxes and links have stable ids, so a live refresh keeps keyboard focus;
- outside text (titles, subjects, summaries, comments) is marked dir=auto;
- the gate page's closed banner lands in a status region that is there from the start;
- every page has a skip link to <main id="main">.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from reviews.forms import PreferencesForm
from reviews.services import claim_gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

RTL_TITLE = "בדוק את ניתוח החוזה עבור לקוח ABC"


def client_for(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def ids(html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', html))


def dangling_describedby(html: str) -> list[str]:
    """The ids named by aria-describedby that no element on the page has."""
    present = ids(html)
    named = [
        name for value in re.findall(r'aria-describedby="([^"]*)"', html) for name in value.split()
    ]
    return [name for name in named if name not in present]


def test_help_texts_and_errors_carry_the_ids_fields_point_to(bell: Bell, people: People) -> None:
    gate = open_gate(bell, "support.ticket_triage")
    c = client_for(people.ana)
    page = c.get(f"/reviews/{gate.pk}/").content.decode()
    assert "aria-describedby" in page  # the help text of a correctable field
    assert dangling_describedby(page) == []

    # A refused decision (422): the field is marked invalid and its message is named.
    r = c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "approve", "edit-priority": "9"})
    assert r.status_code == 422
    html = r.content.decode()
    field = re.search(r'<input[^>]*name="edit-priority"[^>]*>', html)
    assert field and 'aria-invalid="true"' in field.group(0)
    assert "id_edit-priority_error" in field.group(0)
    assert dangling_describedby(html) == []

    prefs = c.get("/reviews/preferences/").content.decode()
    assert dangling_describedby(prefs) == []
    r = c.post(
        "/reviews/preferences/",
        {"chat_enabled": "on", "chat_webhook_url": "ftp://x", "digest_minutes": "0", "mode": "x"},
    )
    assert r.status_code == 422
    assert dangling_describedby(r.content.decode()) == []


def test_a_refused_webhook_url_gets_one_message_not_two(people: People) -> None:
    data = {"chat_enabled": "on", "mode": "immediate", "digest_minutes": "60"}
    form = PreferencesForm({**data, "chat_webhook_url": "http://127.0.0.1/hook"})
    assert not form.is_valid()
    errors = form.errors["chat_webhook_url"]
    assert len(errors) == 1 and "loopback" in errors[0]
    # Left empty, the field still says it is needed.
    form = PreferencesForm({**data, "chat_webhook_url": ""})
    assert not form.is_valid()
    assert form.errors["chat_webhook_url"] == ["Give the webhook URL to turn chat on."]


def test_the_queue_announces_changes_outside_the_list_and_rows_keep_their_ids(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, title=RTL_TITLE)
    c = client_for(people.ana)
    html = c.get("/reviews/").content.decode()
    section = re.search(r'<section id="queue"[^>]*>', html)
    assert section and "aria-live" not in section.group(0)
    status = re.search(r'<p id="queue-status"[^>]*>', html)
    assert status and 'role="status"' in status.group(0)
    assert html.index('id="queue-status"') < html.index('id="queue"')  # outside the list
    for stable in ("gate-row", "gate-pick", "gate-link", "gate-run"):
        assert f'id="{stable}-{gate.pk}"' in html
    link = re.search(rf'<a [^>]*id="gate-link-{gate.pk}"[^>]*>', html)
    assert link and 'dir="auto"' in link.group(0)
    assert 'aria-live="off"' in html  # the countdowns

    # The live refresh (a poll) renders the same ids.
    claim_gate(gate.pk, people.ben)
    poll = c.get("/reviews/?poll=1&fp=old", headers={"HX-Request": "true"}).content.decode()
    assert f'id="gate-link-{gate.pk}"' in poll and 'aria-live="polite"' not in poll


def test_outside_text_on_the_gate_page_takes_its_own_direction(bell: Bell, people: People) -> None:
    gate = open_gate(bell, title=RTL_TITLE)
    html = client_for(people.ana).get(f"/reviews/{gate.pk}/").content.decode()
    h1 = re.search(r'<h1 [^>]*data-testid="gate-title"[^>]*>', html)
    assert h1 and 'dir="auto"' in h1.group(0)
    assert re.search(r'<p class="rv-card-body" dir="auto">', html)
    comment = re.search(r'<textarea[^>]*name="comment"[^>]*>', html)
    assert comment and 'dir="auto"' in comment.group(0)


def test_the_closed_banner_lands_in_a_status_region_that_was_there_first(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell)
    html = client_for(people.ana).get(f"/reviews/{gate.pk}/").content.decode()
    region = re.search(
        r'<div class="rv-closed-region" role="status">\s*<div id="gate-closed" hidden></div>', html
    )
    assert region, "the empty banner sits in the status region from the start"
    # The key note (why a shortcut did nothing) is outside the live-swapped panel.
    assert 'id="key-note"' in html
    panel = html[html.index('id="decision-panel"') : html.index('id="key-note"')]
    assert "</section>" in panel


def test_every_page_has_a_skip_link_to_main(bell: Bell, people: People) -> None:
    gate = open_gate(bell)
    c = client_for(people.ana)
    for url in ("/reviews/", f"/reviews/{gate.pk}/", "/reviews/mine/", "/reviews/preferences/"):
        html = c.get(url).content.decode()
        assert '<a class="skip-link" href="#main">Skip to content</a>' in html, url
        assert re.search(r'<main [^>]*id="main"', html), url
    login = Client().get("/accounts/login/").content.decode()
    assert 'class="skip-link"' in login and 'id="main"' in login
