"""The run page's "waiting for a worker" callout in a real browser (screenshot:
docs/screenshots/run-page-unstarted.png)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from tests.browser import log_in, shot
from tests.operators.conftest import People
from tests.support import Bell
from workflows import start
from workflows.models import Run

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_run_no_worker_took(viewport: Page, live_server: Any, bell: Bell, people: People) -> None:
    run = start("docs.analyze", {"urls": ["https://example.test/a"]}, tenant="acme")
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=4))
    page = viewport
    log_in(page, live_server.url, "ops", f"/runs/{run.pk}/")
    callout = page.get_by_test_id("unstarted")
    expect(callout).to_be_visible()
    expect(callout).to_contain_text("Waiting for a worker for 4 min")
    expect(callout.get_by_role("link", name="ops overview")).to_have_attribute("href", "/ops/")
    shot(page, "run-page-unstarted.png", full_page=False)
