"""Claims whose holder can no longer decide the gate.

A claim ("I am on it") keeps every other reviewer of the gate's group from deciding it, and
keeps it from escalating. When its holder loses the right to decide it (deactivated, removed
from the gate's review group, moved to another tenant), nothing released the claim: the gate
sat frozen until its deadline advanced it with its default, with no human decision, its
escalation group never saw it, and its reminder went to nobody. The beat releases such claims
(``release_void_claims``, every ``SLUICE_VOID_CLAIM_INTERVAL`` seconds), each with a
``released`` audit event saying why.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from reviews.models import Gate, GateEvent, GateEventKind, GateStatus
from reviews.services import gates_visible_to
from workflows.core import clock

log = logging.getLogger(__name__)


def release_void_claims(limit: int = 1000) -> int:
    """Release the open gates' claims whose holders can no longer see and decide them (at
    most ``limit`` per call). One query for the holders, and one or two per holder: holders
    are people, a handful however many gates they hold. Returns the claims released."""
    holders = (
        Gate.objects.filter(status=GateStatus.OPEN, claimed_by__isnull=False)
        .order_by()
        .values_list("claimed_by_id", flat=True)
        .distinct()
    )
    released = 0
    for user in get_user_model().objects.filter(pk__in=list(holders)):
        if released >= limit:
            break
        held = Gate.objects.filter(status=GateStatus.OPEN, claimed_by=user)
        if user.is_active:
            void = held.exclude(pk__in=gates_visible_to(user).values("pk"))
            why = "can no longer decide it (no longer in its review group or its tenant)"
        else:
            void = held
            why = "was deactivated"
        ids = list(void.values_list("pk", flat=True)[: limit - released])
        if ids:
            released += _release(ids, user, f"{user.get_username()} {why}")
    return released


def _release(ids: list[Any], user: Any, reason: str) -> int:
    now = clock.now()
    with transaction.atomic():
        # Locked, and still held by ``user``: a claim released or taken meanwhile is left alone.
        freed = list(
            Gate.objects.select_for_update()
            .filter(pk__in=ids, status=GateStatus.OPEN, claimed_by=user)
            .values_list("pk", flat=True)
        )
        Gate.objects.filter(pk__in=freed).update(claimed_by=None, claimed_at=None)
        GateEvent.objects.bulk_create(
            GateEvent(
                gate_id=pk,
                kind=GateEventKind.RELEASED,
                actor="",
                at=now,
                detail={"holder": user.get_username(), "reason": reason},
            )
            for pk in freed
        )
    if freed:
        log.info("released %s claim(s): %s", len(freed), reason)
    return len(freed)
