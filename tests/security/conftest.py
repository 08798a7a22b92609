"""Fixtures of the access tests: the scene of ``tests.security.scene``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.security.scene import Scene, build
from tests.support import Bell


@pytest.fixture(autouse=True)
def _fast_hashing_and_quiet_webhooks(settings: Any) -> Iterator[None]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SLUICE_WEBHOOK_DISPATCH_ON_COMMIT = False
    settings.SLUICE_RUN_VIEWER_GROUPS = ["reviewers"]
    yield


@pytest.fixture(autouse=True)
def _fresh_pool_cache() -> Iterator[None]:
    from workflows.core.pools import clear_cache

    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def scene(db: None, bell: Bell) -> Scene:
    return build(bell)
