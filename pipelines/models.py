"""Tables of the built-in pipelines. The engine's tables (runs, journal) are in ``workflows``."""

from __future__ import annotations

from django.db import models

from workflows.models import Run


class TicketStatus(models.TextChoices):
    OPEN = "open"
    RESOLVED = "resolved"
    ESCALATED = "escalated"


class Ticket(models.Model):
    """A support ticket opened by the ``support_ticket`` pipeline (one per run)."""

    # SET_NULL: pruning an old run (retention) must not delete the customer's ticket.
    run = models.OneToOneField(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="ticket"
    )
    # The run's tenant: a customer's history is read within one tenant only, as one tenant's
    # tickets (subjects, categories) are none of another's business. "" is the default tenant.
    tenant = models.CharField(max_length=100, blank=True, default="")
    customer_email = models.EmailField(db_index=True)
    subject = models.CharField(max_length=200)
    message = models.TextField()
    category = models.CharField(max_length=32, blank=True, default="")
    urgency = models.CharField(max_length=16, blank=True, default="")
    summary = models.TextField(blank=True, default="")
    status = models.CharField(
        max_length=16, choices=TicketStatus.choices, default=TicketStatus.OPEN
    )
    resolution = models.TextField(blank=True, default="")
    grade = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Set by the outbox handler when the reply left; the reply is sent at most once per ticket.
    reply = models.TextField(blank=True, default="")
    reply_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject}"
