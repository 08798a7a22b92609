"""In a real browser: start a pipeline from its form and watch its graph advance on real workers.

Screenshots land in docs/screenshots/ (pipelines.png, start-form.png, graph.png).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from reviews.models import Gate
from reviews.services import decide_gate
from tests.live import wait_until
from workflows.models import Run

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

# Records every state the graph marks as current, in order, as the page updates itself.
WATCH = """() => {
  window.__seen = [];
  const fig = document.querySelector("figure.sluice-graph");
  const note = () => {
    const now = fig.dataset.current || "";
    if (now && window.__seen[window.__seen.length - 1] !== now) window.__seen.push(now);
  };
  new MutationObserver(note).observe(fig, {attributes: true, attributeFilter: ["data-current"]});
  note();
}"""


def test_it_starts_a_pipeline_from_the_form_and_the_graph_advances(
    live: Any,
    live_server: Any,
    page: Any,
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    live.worker(SLUICE_LLM_OFFLINE_LATENCY="0.6")
    live.beat()
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    page.set_viewport_size({"width": 1320, "height": 900})

    page.goto(f"{live_server.url}/accounts/login/?next=/pipelines/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin")
    page.click("form [type=submit]")
    page.wait_for_url("**/pipelines/")
    page.wait_for_selector("#pipeline-thread_analysis figure.is-rendered svg")
    page.wait_for_selector("#pipeline-document_batch figure.is-rendered svg")
    assert page.locator(".badge-offline").count() >= 3
    page.screenshot(path=str(SHOTS / "pipelines.png"), full_page=True)

    page.click("#pipeline-thread_analysis >> text=Start run")
    page.wait_for_url("**/pipelines/thread_analysis/start/")
    assert "Sam: I never said 6." in page.input_value("textarea[name='input.thread']")
    page.wait_for_selector(".start-graph figure.is-rendered svg")
    page.screenshot(path=str(SHOTS / "start-form.png"), full_page=True)

    # A bad input is refused inline, then corrected.
    page.fill("textarea[name='input.thread']", "")
    page.click("#start-form button[type=submit]")
    page.wait_for_selector(".errorlist >> text=at least 1 character")
    page.fill("input[name='input.title']", "Pick-up argument")
    page.fill(
        "textarea[name='input.thread']",
        (
            "Alex: You said you'd pick me up at 6 and I waited an hour.\n"
            "Sam: I never said 6. You're making that up again.\n"
            "Alex: I have the message right here.\n"
            "Sam: You always do this. You're so dramatic, it was just a joke.\n"
            "Sam: After everything I do for you, you're attacking me? I'm the victim here."
        ),
    )
    page.click("#start-form button[type=submit]")

    page.wait_for_url("**/runs/*/")
    run = Run.objects.get(workflow="thread_analysis")
    assert page.url.endswith(f"/runs/{run.pk}/")
    page.wait_for_selector("figure.sluice-graph.is-rendered svg")
    page.evaluate(WATCH)
    page.wait_for_selector("figure.sluice-graph[data-current='darvo_review']", timeout=30_000)
    # The gate is open: visited states green, the gate current (blue).
    svg = page.locator("figure.sluice-graph svg")
    assert svg.locator("g.visited").count() >= 4  # parsing and the three analyses
    assert svg.locator("g.current").count() == 1
    graph = (
        page.locator(".graph-card")
        if page.locator(".graph-card").count()
        else page.locator("figure.sluice-graph")
    )
    page.add_style_tag(content=".topbar { position: static !important; }")  # not over the shot
    graph.screenshot(path=str(SHOTS / "graph.png"))

    gate = wait_until(
        lambda: Gate.objects.filter(run=run, status="open").first(), 10, message="the review gate"
    )
    decide_gate(gate.pk, outcome="approve", comment="Looks right.", actor="admin")
    page.wait_for_selector("figure.sluice-graph[data-current='complete']", timeout=30_000)
    seen = page.evaluate("window.__seen")
    assert seen.index("darvo_review") < seen.index("complete") == len(seen) - 1
    assert page.locator("figure.sluice-graph").get_attribute("data-status") == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded"
