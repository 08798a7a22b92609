"""Bulk decisions and the gate page polish in a real browser.

Screenshot: docs/screenshots/reviews-bulk.png (the queue with three gates ticked).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from reviews.models import Gate
from reviews.services import claim_gate
from tests.browser import log_in, shot
from tests.reviews.conftest import People, open_gate
from tests.reviews.workflows import SENTIMENT_FIELDS
from tests.support import Bell
from workflows import start

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


THREADS = [
    ("Pick-up argument", "Alex: You said you'd pick me up at 6.\nSam: I never said 6."),
    ("Rent split", "Ann: Can we split the rent 60/40?\nBo: That seems fair, let's do it."),
    ("Holiday plans", "Kim: Where shall we go this summer?\nLee: Somewhere warm, please."),
    ("Team retro", "Max: The release slipped again.\nNoa: You always blame me for this."),
]


@pytest.fixture(autouse=True)
def _offline_pipelines(settings: Any) -> Iterator[None]:
    from workflows.core import pools

    settings.SLUICE_LLM_MODEL = "offline"
    settings.SLUICE_LLM_MODELS = {}
    settings.SLUICE_LLM_OFFLINE_LATENCY = 0.0
    settings.SLUICE_REVIEW_POLL_SECONDS = 1
    pools.clear_cache()
    yield
    pools.clear_cache()


def thread_gates(bell: Bell) -> list[Gate]:
    runs = [start("thread_analysis", {"title": t, "thread": text}) for t, text in THREADS]
    bell.settle()
    gates = [Gate.objects.get(run=run, status="open") for run in runs]
    return sorted(gates, key=lambda g: (g.deadline, g.pk))  # the queue's order


def row(page: Page, gate: Gate) -> Any:
    return page.locator(f'#queue .rv-row[data-gate-id="{gate.pk}"]')


def test_it_ticks_gates_and_approves_them_with_one_comment(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gates = thread_gates(bell)
    claim_gate(gates[3].pk, people.ben)
    log_in(page, live_server.url, "ana")
    expect(page.locator("#queue .rv-row")).to_have_count(4)
    subjects = page.get_by_test_id("row-subject")
    expect(subjects).to_have_text([g.subject for g in gates])
    assert sorted(g.subject for g in gates) == sorted(t for t, _ in THREADS)
    approve = page.get_by_role("button", name="Approve selected")
    expect(approve).to_be_disabled()

    # A click, then a shift-click ticks the range; "x" toggles the row selected with j/k.
    row(page, gates[0]).locator(".rv-pick").click()
    row(page, gates[2]).locator(".rv-pick").click(modifiers=["Shift"])
    expect(page.get_by_test_id("bulk-count")).to_have_text("3")
    for gate in gates[:3]:
        expect(row(page, gate).locator(".rv-pick")).to_be_checked()
    page.locator("body").click(position={"x": 5, "y": 5})
    for _ in range(4):
        page.keyboard.press("j")
    expect(page.locator("#queue .rv-row.selected")).to_have_attribute(
        "data-gate-id", str(gates[3].pk)
    )
    page.keyboard.press("x")
    expect(page.get_by_test_id("bulk-count")).to_have_text("4")
    page.keyboard.press("x")
    expect(page.get_by_test_id("bulk-count")).to_have_text("3")
    page.keyboard.press("x")  # Ben's claimed gate goes in too: it will be skipped, with why
    expect(page.get_by_test_id("bulk-count")).to_have_text("4")
    expect(approve).to_be_enabled()
    page.fill("#bulk-comment", "Checked the quotes, all fine.")
    page.mouse.move(0, 0)
    shot(page, "reviews-bulk.png", full_page=False)

    approve.click()
    page.wait_for_url("**/reviews/")
    expect(page.locator(".flash-success")).to_have_text("Approved 3 gates.")
    skipped = page.get_by_test_id("bulk-skipped")
    expect(skipped).to_have_count(1)
    expect(skipped).to_contain_text("claimed by ben")
    decided = Gate.objects.filter(pk__in=[g.pk for g in gates[:3]])
    assert {(g.status, g.outcome, g.comment, g.decided_by) for g in decided} == {
        ("decided", "approve", "Checked the quotes, all fine.", "ana")
    }
    assert Gate.objects.get(pk=gates[3].pk).status == "open"
    expect(page.locator("#queue .rv-row")).to_have_count(1)


def test_ticks_survive_a_live_refresh_of_the_queue(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    first = open_gate(bell, title="First gate", timeout_s=600)
    log_in(page, live_server.url, "ana")
    row(page, first).locator(".rv-pick").click()
    second = open_gate(bell, title="Second gate", timeout_s=1200)
    expect(row(page, second)).to_be_visible()  # the list was replaced by a refresh
    expect(row(page, first).locator(".rv-pick")).to_be_checked()
    expect(page.get_by_test_id("bulk-count")).to_have_text("1")


def test_the_comment_box_grows_and_the_decided_card_keeps_newlines(
    bell: Bell, live_server: Any, viewport: Page, people: People
) -> None:
    page = viewport
    gate = open_gate(bell, fields=SENTIMENT_FIELDS, payload={"sentiment": "positive", "score": 1})
    log_in(page, live_server.url, "ana", then=f"/reviews/{gate.pk}/")
    box = page.locator("#decision-form textarea[name=comment]")
    before = box.evaluate("el => el.offsetHeight")
    box.fill("\n".join(f"Line {i}" for i in range(1, 13)))
    expect(box).to_have_attribute("data-autogrow", "")
    after = box.evaluate("el => el.offsetHeight")
    assert after > before * 2, (before, after)
    assert box.evaluate("el => el.scrollHeight <= el.clientHeight + 1")  # nothing hidden
    notes = page.locator("textarea[name=edit-notes]")
    notes.fill("Dear Lee,\n\nThanks.")
    page.get_by_role("button", name="Approve").first.click()
    page.wait_for_url("**/reviews/")
    page.goto(f"{live_server.url}/reviews/{gate.pk}/")
    expect(page.get_by_test_id("closed-banner")).to_contain_text("You approved this gate at")
    card = page.locator(".rv-outcome dd", has_text="Dear Lee,")
    assert card.evaluate("el => getComputedStyle(el).whiteSpace") == "pre-wrap"
    assert card.evaluate("el => el.getClientRects().length && el.offsetHeight") > 30
