"""Personas and helpers for the reviews tests.

- ana and ben review for the ``reviewers`` group;
- olga reviews for ``legal`` (a reviewer of another group);
- sam is staff with the gate and run view permissions and the gate change permission (sees
  and decides everything, frees others' claims; staff alone would not, docs/security.md);
- otto is logged in but in no group (an outsider: 403);
- lea reviews for ``leads``, the escalation group of the escalation tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User

import tests.reviews.workflows  # noqa: F401  (registers the review workflows)
from reviews.models import Gate
from tests.support import Bell
from workflows import start


class People:
    def __init__(self) -> None:
        reviewers = Group.objects.create(name="reviewers")
        legal = Group.objects.create(name="legal")
        self.ana = User.objects.create_user("ana", password="pw-ana-123")
        self.ben = User.objects.create_user("ben", password="pw-ben-123")
        self.olga = User.objects.create_user("olga", password="pw-olga-123")
        self.sam = User.objects.create_user("sam", password="pw-sam-123", is_staff=True)
        self.sam.user_permissions.add(
            *Permission.objects.filter(
                codename__in=("view_gate", "change_gate", "view_run"),
                content_type__app_label__in=("reviews", "workflows"),
            )
        )
        self.otto = User.objects.create_user("otto", password="pw-otto-123")
        self.ana.groups.add(reviewers)
        self.ben.groups.add(reviewers)
        self.olga.groups.add(legal)
        # lea leads: she sees a gate of ``reviewers`` only once it escalated to ``leads``.
        leads = Group.objects.create(name="leads")
        self.lea = User.objects.create_user("lea", password="pw-lea-123")
        self.lea.groups.add(leads)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Five personas with the production hasher cost two seconds per test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def people(db: None) -> People:
    return People()


def open_gate(
    bell: Bell, workflow: str = "test.review", *, created_by: str = "", **input: Any
) -> Gate:
    """Start a run that stops at a gate; return the gate."""
    run = start(workflow, input, created_by=created_by)
    bell.drain()
    return Gate.objects.get(run=run, status="open")
