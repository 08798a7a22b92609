"""Personas for the operator pages.

- ops is staff with every permission (acts on runs, sees the ops overview);
- watcher is staff with only the run view permission (sees every run, cannot act);
- ana reviews for the ``reviewers`` group of tenant ``acme``, the scenes' tenant (sees its
  runs, not ops, cannot act);
- otto is logged in but in no group (an outsider: 403 everywhere).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

import tests.operators.workflows  # noqa: F401  (registers the pipelines)
from workflows.models import TenantMembership


class People:
    def __init__(self) -> None:
        reviewers, _ = Group.objects.get_or_create(name="reviewers")
        self.ops = User.objects.create_user(
            "ops", password="pw-ops-123", is_staff=True, is_superuser=True
        )
        self.watcher = User.objects.create_user("watcher", password="pw-watch-123", is_staff=True)
        self.watcher.user_permissions.add(
            Permission.objects.get(content_type__app_label="workflows", codename="view_run")
        )
        self.ana = User.objects.create_user("ana", password="pw-ana-123")
        self.ana.groups.add(reviewers)
        TenantMembership.objects.create(user=self.ana, tenant="acme")
        self.otto = User.objects.create_user("otto", password="pw-otto-123")

    def client(self, user: User | None) -> Client:
        c = Client()
        if user is not None:
            c.force_login(user)
        return c


@pytest.fixture
def people(db: None, settings: Any) -> People:
    # A fast hasher: the default PBKDF2 costs ~0.3 s per user and tests only need a password.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return People()


@pytest.fixture(autouse=True)
def _no_webhook_dispatch(settings: Any) -> Iterator[None]:
    settings.SLUICE_WEBHOOK_DISPATCH_ON_COMMIT = False
    yield


@pytest.fixture(autouse=True)
def _fresh_pool_cache() -> Iterator[None]:
    """workflows.core.pools caches pool rows for 5 s; the test database is flushed between tests,
    so a cached pool must not outlive its row."""
    from workflows.core.pools import clear_cache

    clear_cache()
    yield
    clear_cache()
