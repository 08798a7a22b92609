"""/pipelines/: the list, the "Start run" form generated from the input schema, a run's graph."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from pipelines.builtin import document_batch
from workflows.models import Run

pytestmark = [pytest.mark.core, pytest.mark.django_db]


def may_start(user: User) -> User:
    """Grant the permission that starting a run from the web needs."""
    user.user_permissions.add(Permission.objects.get(codename="start_run"))
    return user


@pytest.fixture
def starter(client: Client) -> Client:
    """A signed-in user who may start runs (``workflows.start_run``)."""
    user = may_start(User.objects.create_user("starter", password="pw"))
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def _no_doorbell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs are started, not executed, here: keep the doorbell quiet."""
    monkeypatch.setattr("workflows.core.doorbell.send_advance", lambda *a: None)


def form_key(html: str) -> str:
    m = re.search(r'name="form_key" value="([0-9a-f]{32})"', html)
    assert m
    return m.group(1)


def test_an_outsider_is_sent_to_log_in(client: Client) -> None:
    for url in ("/pipelines/", "/pipelines/thread_analysis/start/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_it_lists_pipelines_with_description_graph_and_start_link(starter: Client) -> None:
    response = starter.get("/pipelines/")
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["nav"] == "pipelines"
    names = [p["name"] for p in response.context["pipelines"]]
    assert names[:3] == ["thread_analysis", "support_ticket", "document_batch"]
    assert 'href="/pipelines/thread_analysis/start/"' in html
    assert "Psychological analysis of a message thread" in html
    assert "stateDiagram-v2" in html and "vendor/mermaid/mermaid.min.js" in html
    assert not re.search(r'<script[^>]+src="(https?:)?//', html)  # no CDN
    assert 'class="badge badge-offline"' in html
    assert "not by a language model" in html


def test_the_form_is_generated_from_the_schema_and_prefilled(starter: Client) -> None:
    html = starter.get("/pipelines/document_batch/start/").content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert (
        'name="input.documents.0.title" id="f-input-documents-0-title" value="Quarterly update"'
        in html
    )
    assert 'name="input.documents.2.text"' in html
    assert "<template>" in html and "input.documents.__index__.title" in html
    support = starter.get("/pipelines/support_ticket/start/").content.decode()
    assert '<select name="input.channel"' in support
    assert '<option value="email" selected>email</option>' in support
    assert 'maxlength="200"' in support


def test_a_valid_form_starts_the_run_and_goes_to_its_page(starter: Client) -> None:
    key = form_key(starter.get("/pipelines/thread_analysis/start/").content.decode())
    data = {
        "form_key": key,
        "input.title": "Mine",
        "input.thread": "Ann: hi\r\nBo: hello",
        "max_cost": "0.25",
    }
    response = starter.post("/pipelines/thread_analysis/start/", data)
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.pk}/"
    assert run.workflow == "thread_analysis"
    assert run.input == {"title": "Mine", "thread": "Ann: hi\nBo: hello"}
    assert (run.created_by, run.max_cost) == ("starter", Decimal("0.25"))
    # The same form submitted twice starts one run.
    again = starter.post("/pipelines/thread_analysis/start/", data)
    assert again["Location"] == f"/runs/{run.pk}/" and Run.objects.count() == 1


def test_the_same_form_sent_again_with_other_values_starts_nothing_and_says_why(
    starter: Client,
) -> None:
    """Back, edit, submit: the form's key already started a run with other values (or of
    another pipeline). Not a 500, and not a second run behind the user's back: the form comes
    back with the reason and a new key, and submitting that starts the new run."""
    key = form_key(starter.get("/pipelines/thread_analysis/start/").content.decode())
    data = {"form_key": key, "input.title": "Mine", "input.thread": "Ann: hi"}
    assert starter.post("/pipelines/thread_analysis/start/", data).status_code == 302
    first = Run.objects.get()
    edited = {**data, "input.title": "Mine (fixed)"}
    again = starter.post("/pipelines/thread_analysis/start/", edited)
    assert again.status_code == 400 and Run.objects.count() == 1
    page = again.content.decode()
    assert f"This form already started run {first.pk} with other values" in page
    assert 'value="Mine (fixed)"' in page  # the edits are kept
    fresh = form_key(page)
    assert fresh != key
    done = starter.post("/pipelines/thread_analysis/start/", {**edited, "form_key": fresh})
    assert done.status_code == 302 and Run.objects.count() == 2
    assert Run.objects.exclude(pk=first.pk).get().input["title"] == "Mine (fixed)"
    # The same key sent to another pipeline's form.
    other = starter.post(
        "/pipelines/support_ticket/start/",
        {"form_key": key, **{f"input.{k}": v for k, v in _ticket().items()}},
    )
    assert other.status_code == 400 and Run.objects.count() == 2
    assert "already started run" in other.content.decode()


def _ticket() -> dict[str, str]:
    return {
        "customer_email": "a@example.com",
        "subject": "s",
        "message": "the printer is on fire",
        "channel": "email",
    }


def test_repeatable_items_are_read_in_order_with_gaps(starter: Client) -> None:
    starter.post(
        "/pipelines/document_batch/start/",
        {
            "input.documents.0.title": "A",
            "input.documents.0.text": "first",
            "input.documents.3.title": "B",
            "input.documents.3.text": "second",
        },
    )
    assert Run.objects.get().input == {
        "documents": [{"title": "A", "text": "first"}, {"title": "B", "text": "second"}]
    }


def test_invalid_input_is_shown_inline_and_nothing_starts(starter: Client) -> None:
    response = starter.post(
        "/pipelines/document_batch/start/",
        {
            "input.documents.0.title": "",
            "input.documents.0.text": "ok",
            "max_cost": "lots",
        },
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert not Run.objects.exists()
    assert "The run was not started" in html
    field = html.split('id="f-input-documents-0-title"')[1].split("</div>")[0]
    assert 'aria-invalid="true"' in html.split('name="input.documents.0.title"')[1][:200]
    assert "String should have at least 1 character" in field
    assert "Enter an amount in USD" in html
    assert ">ok</textarea>" in html  # what was typed is kept


def test_an_empty_list_is_reported_on_the_list_field(starter: Client) -> None:
    response = starter.post("/pipelines/document_batch/start/", {})
    assert response.status_code == 400
    assert "List should have at least 1 item" in response.content.decode()


def test_an_unknown_pipeline_is_404(starter: Client) -> None:
    assert starter.get("/pipelines/nope/start/").status_code == 404
    assert starter.get("/pipelines/test.chain/start/").status_code == 404  # not a pipeline


def test_the_form_needs_its_csrf_token() -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(may_start(User.objects.create_user("csrf", password="pw")))
    response = client.post("/pipelines/thread_analysis/start/", {"input.thread": "A: b"})
    assert response.status_code == 403
    assert not Run.objects.exists()


# --- a run's graph ----------------------------------------------------------------------------


def test_the_run_graph_is_json_for_those_who_may_see_the_run(client: Client) -> None:
    from workflows import start

    owner = User.objects.create_user("owner", password="pw")
    reviewer = User.objects.create_user("rev", password="pw")
    reviewer.groups.add(Group.objects.create(name="reviewers"))
    outsider = User.objects.create_user("outsider", password="pw")
    run = start("document_batch", document_batch.SAMPLE, created_by="owner")
    url = f"/pipelines/runs/{run.pk}/graph/"
    for user in (owner, reviewer):
        client.force_login(user)
        data = client.get(url).json()
        assert (data["status"], data["active"]) == ("pending", True)
        assert data["mermaid"].startswith("stateDiagram-v2")
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    assert (
        client.get("/pipelines/runs/00000000-0000-0000-0000-000000000000/graph/").status_code == 404
    )
