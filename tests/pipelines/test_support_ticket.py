"""support_ticket's tickets stay in their tenant, its reply leaves once per ticket, and an
approved reply the reviewer emptied is never replaced by the failing draft."""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission, User
from django.core import mail
from django.test import Client
from django.utils import timezone

from pipelines.builtin import support_ticket
from pipelines.models import Ticket
from reviews.models import Gate
from reviews.services import decide_gate
from tests.support import Bell
from workflows import get_run, restart, start
from workflows.core.outbox import deliver_due
from workflows.core.sweeper import prune_outbox
from workflows.models import Outbox, Run, Step

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]

UNKNOWN_TOPIC = {
    "customer_email": "lee@example.com",
    "subject": "Parrot in the office",
    "message": "Our office parrot keeps chewing the plants. What should we feed him?",
}


def settle(bell: Bell, run: Run) -> Run:
    bell.settle()
    return get_run(run.pk)


# --- tenants ----------------------------------------------------------------------------------


def test_a_customers_history_is_read_within_the_runs_tenant(bell: Bell, offline: Any) -> None:
    """Review finding: a run of tenant globex listed (and summarized, into a model's prompt)
    the subjects of tenant acme's tickets of the same address."""
    secret = "ACME CONFIDENTIAL: merger invoice question"
    acme = settle(
        bell, start("support_ticket", {**support_ticket.SAMPLE, "subject": secret}, tenant="acme")
    )
    globex = settle(
        bell,
        start(
            "support_ticket",
            {**support_ticket.SAMPLE, "customer_email": "Dana@Example.com"},
            tenant="globex",
        ),
    )
    assert Step.objects.get(run=globex, name="customer_history").result == {
        "previous_tickets": [],
        "returning_customer": False,
    }
    assert "CONFIDENTIAL" not in str(Step.objects.get(run=globex, name="summarize_request").result)
    assert Ticket.objects.get(run=acme).tenant == "acme"
    assert Ticket.objects.get(run=globex).tenant == "globex"

    # Within its own tenant the customer is a returning one, as before.
    again = settle(
        bell, start("support_ticket", {**support_ticket.SAMPLE, "subject": "Again"}, tenant="acme")
    )
    history = Step.objects.get(run=again, name="customer_history").result
    assert [t["subject"] for t in history["previous_tickets"]] == [secret]


def test_the_migration_gives_existing_tickets_their_runs_tenant() -> None:
    migration = importlib.import_module("pipelines.migrations.0002_ticket_tenant")
    run = Run.objects.create(workflow="support_ticket", status="succeeded", tenant="acme")
    kept = Ticket.objects.create(run=run, customer_email="a@example.com", subject="s", message="m")
    orphan = Ticket.objects.create(customer_email="a@example.com", subject="s", message="m")
    migration.tenant_from_run(apps, None)
    kept.refresh_from_db()
    orphan.refresh_from_db()
    # A ticket whose run was pruned cannot be placed: it stays in the default tenant.
    assert (kept.tenant, orphan.tenant) == ("acme", "")


def test_the_ticket_admin_opens_to_the_view_permission_only(client: Client) -> None:
    """It lists every tenant's tickets: the change permission alone showed them (Django's
    default), although nothing on the read-only pages can be changed."""
    user = User.objects.create_user("ops", password="pw-ops-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_ticket"))
    client.force_login(user)
    assert client.get("/admin/pipelines/ticket/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_ticket"))
    user = User.objects.get(pk=user.pk)  # permissions are cached on the user object
    client.force_login(user)
    Ticket.objects.create(customer_email="a@example.com", subject="s", message="m", tenant="acme")
    page = client.get("/admin/pipelines/ticket/")
    assert page.status_code == 200 and "acme" in page.content.decode()


# --- the reply leaves once --------------------------------------------------------------------


def test_a_restarted_run_does_not_mail_a_reply_whose_outbox_row_was_pruned(
    bell: Bell, offline: Any, settings: Any
) -> None:
    """Review finding: the outbox key made the reply idempotent only while the delivered row
    existed; once retention pruned it, the send step run again mailed the customer again."""
    settings.SLUICE_SUPPORT_SEND_EMAIL = True
    run = settle(bell, start("support_ticket", support_ticket.SAMPLE))
    assert run.status == "succeeded"
    assert deliver_due() == 1 and len(mail.outbox) == 1
    ticket = Ticket.objects.get(run=run)
    sent_at = ticket.reply_sent_at
    assert sent_at is not None
    Outbox.objects.filter(key=f"support-reply:{ticket.pk}").update(
        delivered_at=timezone.now() - timedelta(days=400)
    )
    assert prune_outbox() == 1

    send = Step.objects.get(run=run, name="send_reply", superseded=False)
    restart(run.pk, from_step=send.position)
    run = settle(bell, run)
    assert run.status == "succeeded" and run.generation == 2
    assert not Outbox.objects.filter(kind=support_ticket.REPLY_KIND).exists()
    deliver_due()
    assert len(mail.outbox) == 1
    again = Step.objects.get(run=run, name="send_reply", superseded=False)
    assert again.result["already_sent_at"] == sent_at.isoformat()
    ticket.refresh_from_db()
    assert ticket.reply_sent_at == sent_at


def test_a_second_outbox_row_of_a_ticket_already_answered_sends_nothing(
    offline: Any, settings: Any
) -> None:
    settings.SLUICE_SUPPORT_SEND_EMAIL = True
    ticket = Ticket.objects.create(
        customer_email="dana@example.com", subject="s", message="m", reply_sent_at=timezone.now()
    )
    row = Outbox(
        payload={
            "ticket_id": ticket.pk,
            "to": "dana@example.com",
            "subject": "Re: s",
            "body": "again",
        }
    )
    support_ticket.deliver_reply(row)
    assert mail.outbox == []


# --- an emptied reply -------------------------------------------------------------------------


@pytest.mark.parametrize("emptied", ["", "  \n "])
def test_approving_an_emptied_reply_sends_nothing_and_escalates(
    bell: Bell, offline: Any, emptied: str
) -> None:
    """Review finding: ``edits.get("reply") or reply`` sent the draft that failed grading
    five times when the reviewer cleared the field and approved."""
    run = settle(bell, start("support_ticket", UNKNOWN_TOPIC))
    gate = Gate.objects.get(run=run, status="open")
    decide_gate(gate.pk, outcome="approve", edits={"reply": emptied}, actor="tester")
    run = settle(bell, run)
    assert run.status == "succeeded"
    out = run.output
    assert (out["status"], out["reply"], out["outbox_key"]) == ("escalated", "", None)
    assert out["review"]["outcome"] == "approve"
    assert out["review"]["note"] == (
        "approved with an empty reply: nothing was sent and the ticket was escalated"
    )
    assert not Outbox.objects.filter(kind=support_ticket.REPLY_KIND).exists()
    ticket = Ticket.objects.get(run=run)
    assert (ticket.status, ticket.resolution) == ("escalated", "")


def test_approving_without_editing_sends_the_draft_shown(bell: Bell, offline: Any) -> None:
    run = settle(bell, start("support_ticket", UNKNOWN_TOPIC))
    gate = Gate.objects.get(run=run, status="open")
    decide_gate(gate.pk, outcome="approve", actor="tester")
    run = settle(bell, run)
    assert run.output["status"] == "resolved"
    body = Outbox.objects.get(kind=support_ticket.REPLY_KIND).payload["body"]
    assert body == gate.payload["reply"] and body.startswith("Hi Lee,")
