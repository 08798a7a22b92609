"""Single sign-on with claims that cannot be stored, or an e-mail that is not one.

Each refused case must end on the login page (never a 500), log why, and leave nothing behind:
no account, no identity, no membership. Runs against the fake provider of test_oidc.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DataError
from django.test import Client

from config.oidc import FAILURE_URL, SluiceOIDCBackend
from tests.oidc_provider import FakeProvider
from tests.security import test_oidc
from tests.security.test_oidc import logged_in_user, sso_login
from workflows.models import OidcIdentity, TenantMembership

pytestmark = pytest.mark.django_db

provider = test_oidc.provider  # the fake provider fixture, configured as in test_oidc

REFUSED = {
    "long-email": ({"email": "a" * 300 + "@example.com"}, "'email' is longer than 254"),
    "long-tenant": ({"tenant": "t" * 101}, "'tenant' is longer than 100"),
    "long-sub": ({"sub": "s" * 300}, "'sub' is longer than 255"),
    "nul-email": ({"email": "a\x00@example.com"}, "'email' contains a NUL"),
    "nul-tenant": ({"tenant": "a\x00"}, "'tenant' contains a NUL"),
    "control-tenant": ({"tenant": "acme\x1b[2J"}, "'tenant' contains a NUL"),
    "c1-email": ({"email": "a\x85@example.com"}, "'email' contains a NUL"),
    "surrogate-tenant": ({"tenant": "a\ud800"}, "'tenant' contains a NUL"),
    "surrogate-name": ({"given_name": "\ud800"}, "'given_name' contains a NUL"),
    "nul-sub": ({"sub": "u-\x00"}, "'sub' contains a NUL"),
    "number-sub": ({"sub": 10**30}, "Subject must be a string"),  # PyJWT's own check
}


def refused(client: Client, response: Any) -> None:
    assert response.status_code == 302 and response["Location"] == FAILURE_URL
    assert logged_in_user(client) is None
    assert not User.objects.exists()
    assert not OidcIdentity.objects.exists() and not TenantMembership.objects.exists()


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_claim_that_cannot_be_stored_refuses_the_login(
    client: Client, provider: FakeProvider, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    claims, reason = REFUSED[case]
    provider.claims = {**provider.claims, **claims}
    with caplog.at_level(logging.WARNING, logger="sluice.security"):
        response = sso_login(client, provider)
    refused(client, response)
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text


def test_a_bad_tenant_at_a_later_login_changes_nothing(
    client: Client, provider: FakeProvider
) -> None:
    sso_login(client, provider)
    rita = User.objects.get(username="rita")
    client.logout()
    provider.claims = {**provider.claims, "tenant": "t" * 101}
    response = sso_login(client, provider)
    assert response.status_code == 302 and response["Location"] == FAILURE_URL
    assert logged_in_user(client) is None
    assert TenantMembership.objects.get(user=rita).tenant == "acme"
    # Fixed at the provider: the next login works.
    provider.claims = {**provider.claims, "tenant": "acme"}
    assert sso_login(client, provider)["Location"] == "/reviews/"
    assert logged_in_user(client) == rita


def test_a_database_error_is_a_failed_login_that_leaves_no_account(
    client: Client, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop: what the claim checks let through and the database refuses while the
    account is written (here at the tenant, the last write) rolls the whole account back."""

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise DataError("value too long for type character varying(100)")

    monkeypatch.setattr(TenantMembership.objects, "update_or_create", failing)
    refused(client, sso_login(client, provider))
    monkeypatch.undo()
    # Nothing half-made: the next login creates the account whole.
    assert sso_login(client, provider)["Location"] == "/reviews/"
    rita = logged_in_user(client)
    assert rita is not None and TenantMembership.objects.get(user=rita).tenant == "acme"


@pytest.mark.parametrize(
    "email",
    [{"a": 1}, "{'a': 1}", "no-domain", "two@@example.com", ["rita@example.com"], 42],
)
def test_an_email_claim_that_is_not_an_address_is_not_stored(
    client: Client, provider: FakeProvider, caplog: pytest.LogCaptureFixture, email: Any
) -> None:
    provider.claims = {**provider.claims, "email": email}
    with caplog.at_level(logging.WARNING, logger="sluice.security"):
        response = sso_login(client, provider)
    assert response["Location"] == "/reviews/"
    user = logged_in_user(client)
    assert user is not None and user.email == "" and user.username == "rita"
    assert "is not an e-mail address" in caplog.text


def test_a_valid_email_is_stored(client: Client, provider: FakeProvider) -> None:
    provider.claims = {**provider.claims, "email": "Rita.Q+sluice@mail.example.com"}
    sso_login(client, provider)
    user = logged_in_user(client)
    assert user is not None and user.email == "Rita.Q+sluice@mail.example.com"


def test_the_limits_are_the_columns(provider: FakeProvider, settings: Any) -> None:
    settings.SLUICE_OIDC_TENANT_CLAIM = "org"
    backend = SluiceOIDCBackend()
    limits = backend._claim_limits()
    assert limits["sub"] == limits["iss"] == 255
    assert limits["email"] == 254 and limits["org"] == 100
    ok = {"sub": "x" * 255, "iss": "https://id.example.com", "email": "e" * 240 + "@example.com"}
    assert backend.unstorable_claim({**ok, "org": "o" * 100}) is None
    assert backend.unstorable_claim({**ok, "org": "o" * 101}) == (
        "claim 'org' is longer than 100 characters (101)"
    )


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"given_name": "\U0001f600" * 200}, id="long-name-is-cut"),
        pytest.param({"preferred_username": "\u202eadmin"}, id="rtl-username"),
        pytest.param({"tenant": ["acme"]}, id="list-tenant-is-none"),
    ],
)
def test_odd_claims_that_can_be_stored_log_in(
    client: Client, provider: FakeProvider, claims: dict[str, Any]
) -> None:
    provider.claims = {**provider.claims, **claims}
    assert sso_login(client, provider)["Location"] == "/reviews/"
    assert logged_in_user(client) is not None
