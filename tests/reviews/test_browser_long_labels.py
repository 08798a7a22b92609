"""A gate's facts are a two-column list (``.kv``): each label as wide as it needs up to about a
third of the list, wrapping past that, and the values beside them. Sized ``max-content``, a
payload key of 3,000 characters without a space made the list 23,000 px wide, and every value
sat off-screen. Ordinary labels keep their one-line width.

Screenshots go to the scratch directory only (``tmp_path``), not to docs/screenshots.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from reviews.services import decide_gate
from tests.browser import log_in
from tests.reviews.conftest import People, open_gate
from tests.reviews.workflows import ANALYSES
from tests.support import Bell

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_KEY = "k" * 3_000  # no space, no hyphen: no break opportunity


@pytest.fixture(autouse=True)
def _no_polls(settings: Any) -> None:
    settings.SLUICE_REVIEW_POLL_SECONDS = 600
    settings.SLUICE_REVIEW_PUSH = False


def long_key_payload() -> dict[str, Any]:
    card = {**ANALYSES["analyses"][0], LONG_KEY: "value of the card's long key"}
    return {**ANALYSES, LONG_KEY: "value of the long key", "analyses": [card]}


def labels(page: Page) -> list[dict[str, float]]:
    """Each label of each fact list on the page: its box, its value's box, its list's width and
    the width its text takes on one line."""
    return page.evaluate(
        """() => [...document.querySelectorAll('main dl.kv > dt')].map(dt => {
          const dd = dt.nextElementSibling, list = dt.parentElement.getBoundingClientRect();
          const a = dt.getBoundingClientRect(), b = dd.getBoundingClientRect();
          const probe = document.createElement('span');
          probe.style.whiteSpace = 'nowrap';
          probe.textContent = dt.textContent;
          dt.appendChild(probe);
          const natural = probe.getBoundingClientRect().width;
          probe.remove();
          return {text: dt.textContent.length, left: a.left, width: a.width, height: a.height,
                  valueLeft: b.left, valueRight: b.right, valueWidth: b.width,
                  list: list.width, natural: natural,
                  line: parseFloat(getComputedStyle(dt).lineHeight)};
        })"""
    )


@pytest.mark.parametrize("width", [1360, 390])
def test_a_long_label_wraps_and_its_value_stays_in_view(
    bell: Bell, live_server: Any, viewport: Page, people: People, width: int, tmp_path: Any
) -> None:
    page = viewport
    page.set_viewport_size({"width": width, "height": 900})
    gate = open_gate(bell, payload=long_key_payload())
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    page.screenshot(path=str(tmp_path / f"gate-long-key-{width}.png"), full_page=False)
    scroll_width, viewport_width = page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert scroll_width <= viewport_width, f"the page is {scroll_width} px wide"
    long = [label for label in labels(page) if label["text"] == len(LONG_KEY)]
    assert len(long) == 2  # the overview's fact and the card's
    for label in long:
        # wrapped within about a third of its list; its value beside it, in view and readable
        assert label["width"] <= label["list"] * 0.35 + 1, label
        assert label["valueLeft"] > label["left"] and label["valueRight"] <= viewport_width, label
        assert label["valueWidth"] >= label["list"] * 0.5, label


def test_ordinary_labels_keep_their_one_line_width(
    bell: Bell, live_server: Any, viewport: Page, people: People, tmp_path: Any
) -> None:
    page = viewport
    gate = open_gate(bell)  # the usual analysis: "Document", "Model" facts
    decided = open_gate(bell)
    decide_gate(decided.pk, outcome="approve", comment="Checked.", actor="ana", user=people.ana)
    log_in(page, live_server.url, "ana", f"/reviews/{gate.pk}/")
    for name, url in (("open", f"/reviews/{gate.pk}/"), ("decided", f"/reviews/{decided.pk}/")):
        page.goto(live_server.url + url)
        page.screenshot(path=str(tmp_path / f"gate-ordinary-{name}.png"), full_page=True)
        found = labels(page)
        assert len(found) >= (2 if name == "open" else 6), name  # the decided one: its outcome
        for label in found:
            # one line, as wide as its text: the column is the widest label of its list
            assert label["height"] < 1.5 * label["line"], (name, label)
            assert label["width"] + 0.5 >= label["natural"], (name, label)
