"""Accessibility of the reviewer pages' markup, second review (keyboard-only screen-reader use,
200 % zoom, Windows High Contrast), checked on the server's HTML; the behaviour in a browser is
in test_browser_a11y.py.

- after a decision the next gate's page names both gates by their run's subject (its title, the
  flash), and the flash is inside <main> (the skip link does not jump past it) and focusable;
- the shortcut hints are text (not an aria-label on a <div>), with an on/off switch; the
  buttons say their key in aria-keyshortcuts and their <kbd> is hidden from their name;
- the note that says why a shortcut did nothing, or that someone else took the gate, and the
  count of ticked gates are live regions that are on the page from the start;
- the run page's header, redrawn every 2 s while the run is live, has no live roles then.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from reviews.models import Gate
from tests.reviews.conftest import People, open_gate
from tests.support import Bell
from workflows.core.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

HOSTILE = "<b>Acme & Co</b> renewal"


def client_for(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def tag(html: str, pattern: str) -> str:
    found = re.search(pattern, html, re.S)
    assert found, pattern
    return found.group(0)


def with_subject(gate: Gate, subject: str, title: str = "Check the contract analysis") -> Gate:
    """The gate as a pipeline makes it: a shared title, the run's own subject."""
    Gate.objects.filter(pk=gate.pk).update(subject=subject, title=title)
    return Gate.objects.get(pk=gate.pk)


def test_after_a_decision_the_next_page_names_both_gates_by_subject(
    bell: Bell, people: People
) -> None:
    first = with_subject(open_gate(bell, timeout_s=600), "Nordwind supply contract")
    second = with_subject(open_gate(bell, timeout_s=1200), HOSTILE)
    c = client_for(people.ana)
    r = c.post(f"/reviews/{first.pk}/decide/", {"outcome": "approve"}, follow=True)
    assert r.redirect_chain[-1][0] == f"/reviews/{second.pk}/"
    html = r.content.decode()

    # The two pages differ in their title: the subject comes first (escaped: LLM-derived text).
    title = tag(html, r"<title>.*?</title>")
    assert "&lt;b&gt;Acme &amp; Co&lt;/b&gt; renewal — Check the contract analysis" in title
    # ... and near the h1, which it describes.
    subject = tag(html, r'<p class="rv-gate-subject[^"]*" id="gate-subject"[^>]*>.*?</p>')
    assert "&lt;b&gt;Acme &amp; Co&lt;/b&gt; renewal" in subject
    assert 'aria-describedby="gate-subject"' in tag(
        html, r'<h1 [^>]*data-testid="gate-title"[^>]*>'
    )

    # The flash names the decided gate and the next one by subject, inside <main>, focusable.
    main = html[html.index('<main class="container" id="main"') :]
    flash = tag(main, r'<div class="flash flash-success"[^>]*>[^<]*</div>')
    assert 'tabindex="-1"' in flash and 'role="status"' in flash
    # Each name isolated (FSI … PDI): a U+202E in a subject cannot reorder the sentence.
    assert "Approved “\u2068Nordwind supply contract\u2069”." in flash
    assert "Next up: “\u2068&lt;b&gt;Acme &amp; Co&lt;/b&gt; renewal\u2069”." in flash
    assert "<b>Acme" not in html
    assert html.index('class="flashes"') > html.index('id="main"')


def test_my_decisions_links_a_gate_by_its_subject(bell: Bell, people: People) -> None:
    gate = with_subject(open_gate(bell), HOSTILE)
    c = client_for(people.ana)
    c.post(f"/reviews/{gate.pk}/decide/", {"outcome": "reject"})
    html = c.get("/reviews/mine/").content.decode()
    link = tag(html, r'<a [^>]*data-testid="decision-link"[^>]*>.*?</a>')
    assert "&lt;b&gt;Acme &amp; Co&lt;/b&gt; renewal</a>" in link
    assert "<b>Acme" not in html
    assert "Check the contract analysis" in html  # the gate's own title still shows


def test_shortcut_hints_are_text_with_a_switch_and_the_buttons_name_their_keys(
    bell: Bell, people: People
) -> None:
    gate = open_gate(bell, title="Check the indemnity clause")
    c = client_for(people.ana)
    queue = c.get("/reviews/").content.decode()
    hint = tag(queue, r'<div class="rv-keys[^"]*">.*?</div>')
    assert "aria-label" not in hint
    toggle = '<input type="checkbox" id="keys-toggle" data-keys-toggle checked> Keyboard shortcuts'
    assert f"{toggle}</label>" in hint

    page = c.get(f"/reviews/{gate.pk}/").content.decode()
    hint = tag(page, r'<p class="rv-keyhelp[^"]*">.*?</p>')
    assert "aria-label" not in hint
    assert 'id="keys-toggle" data-keys-toggle' in hint and "Keyboard shortcuts</label>" in hint
    claim = tag(page, r"<button [^>]*data-key=\"c\"[^>]*>.*?</button>")
    assert 'aria-keyshortcuts="c"' in claim and '<kbd aria-hidden="true">c</kbd>' in claim
    for key, name in (("a", "Approve"), ("r", "Reject")):
        button = tag(page, rf'<button [^>]*data-key="{key}"[^>]*>.*?</button>')
        assert f'aria-keyshortcuts="{key}"' in button
        assert f'{name} <kbd aria-hidden="true">{key}</kbd>' in button

    # The note under the panel is a polite live region from the start, outside the panel.
    note = tag(page, r'<p id="key-note"[^>]*>')
    assert 'role="status"' in note and 'aria-live="polite"' in note
    panel = page[page.index('id="decision-panel"') :]
    assert panel.index('id="key-note"') > panel.index("</section>")


def test_the_count_of_ticked_gates_is_a_status_region_from_the_start(
    bell: Bell, people: People
) -> None:
    open_gate(bell, title="Check the indemnity clause")
    html = client_for(people.ana).get("/reviews/").content.decode()
    count = tag(html, r'<span class="rv-bulk-count"[^>]*>')
    assert 'role="status"' in count and 'aria-atomic="true"' in count
    assert html.index("rv-bulk-count") < html.index('id="queue"')  # not in the refreshed list


def test_the_live_run_header_has_no_live_roles(bell: Bell, people: People) -> None:
    gate = open_gate(bell, title="Check the indemnity clause")
    run_id = gate.run_id
    c = client_for(people.sam)
    error = {"type": "AdvanceFailed", "message": "the database went away"}

    def head() -> str:
        html = c.get(f"/runs/{run_id}/").content.decode()
        return tag(html, r'<section id="run-head".*?</section>')

    Run.objects.filter(pk=run_id).update(error=error)  # between two failed advances: live
    callout = tag(head(), r'<div class="callout callout-bad"[^>]*>')
    assert "role=" not in callout

    Run.objects.filter(pk=run_id).update(status="compensating", after_compensation="failed")
    undo = tag(head(), r'<div class="callout callout-undo"[^>]*>')
    assert "role=" not in undo

    Run.objects.filter(pk=run_id).update(status="failed")  # ended: said once, as an alert
    callout = tag(head(), r'<div class="callout callout-bad"[^>]*>')
    assert 'role="alert"' in callout
