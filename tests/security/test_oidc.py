"""Single sign-on (config.oidc) against a fake OpenID Connect provider on 127.0.0.1.

The whole code flow runs over real HTTP: /oidc/authenticate/ redirects to the provider, the
provider redirects back with a code, the callback exchanges it for an RS256 ID token checked
against the provider's JWKS. The negative cases each forge one thing and must end on the login
page with nobody logged in and no account created.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group, User
from django.test import Client

from config.oidc import FAILURE_URL
from tests.oidc_provider import FakeProvider
from workflows.models import OidcIdentity, TenantMembership

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider(settings: Any) -> Iterator[FakeProvider]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with FakeProvider() as p:
        for name, value in p.settings().items():
            setattr(settings, name, value)
        settings.SLUICE_OIDC_PROVIDER_NAME = "Acme ID"
        settings.SLUICE_OIDC_GROUP_MAP = "idp-reviewers=reviewers, legal"
        settings.SLUICE_OIDC_STAFF_CLAIM = "roles"
        settings.SLUICE_OIDC_STAFF_VALUE = "sluice-operator"
        p.claims = {
            "sub": "u-rita",
            "email": "rita@example.com",
            "preferred_username": "rita",
            "groups": ["idp-reviewers", "admins"],
            "tenant": "acme",
        }
        yield p


def to_provider(client: Client, provider: FakeProvider, next: str = "/reviews/") -> str:
    """Start the flow; return the provider's redirect back to the callback (path + query)."""
    start = client.get("/oidc/authenticate/", {"next": next})
    assert start.status_code == 302
    assert start["Location"].startswith(f"{provider.base}/authorize?")
    query = parse_qs(urlsplit(start["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    back = requests.get(start["Location"], allow_redirects=False, timeout=5)
    assert back.status_code == 302
    url = urlsplit(back.headers["Location"])
    assert url.path == "/oidc/callback/"
    return f"{url.path}?{url.query}"


def sso_login(client: Client, provider: FakeProvider, next: str = "/reviews/") -> Any:
    return client.get(to_provider(client, provider, next))


def logged_in_user(client: Client) -> User | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


def assert_refused(client: Client, response: Any) -> None:
    assert response.status_code == 302 and response["Location"] == FAILURE_URL
    assert logged_in_user(client) is None
    page = client.get(FAILURE_URL)
    assert b"Single sign-on did not complete" in page.content


# --- off by default ------------------------------------------------------------------------


def test_sso_is_off_unless_configured(client: Client) -> None:
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404
    assert b"Sign in with" not in client.get("/accounts/login/").content


def test_password_login_still_works_with_sso_on(client: Client, provider: FakeProvider) -> None:
    User.objects.create_user("lou", password="pw-lou-123")
    page = client.get("/accounts/login/")
    assert b"Sign in with Acme ID" in page.content
    response = client.post("/accounts/login/", {"username": "lou", "password": "pw-lou-123"})
    assert response.status_code == 302 and logged_in_user(client).username == "lou"  # type: ignore[union-attr]


# --- the happy path ------------------------------------------------------------------------


def test_first_login_creates_the_user_with_mapped_groups_and_tenant(
    client: Client, provider: FakeProvider
) -> None:
    response = sso_login(client, provider)
    assert response.status_code == 302 and response["Location"] == "/reviews/"
    user = logged_in_user(client)
    assert user is not None and user.username == "rita" and user.email == "rita@example.com"
    # "admins" is not in the map: ignored, and no such group was created.
    assert set(user.groups.values_list("name", flat=True)) == {"reviewers"}
    assert not Group.objects.filter(name="admins").exists()
    assert TenantMembership.objects.get(user=user).tenant == "acme"
    assert not user.is_staff and not user.is_superuser and not user.has_usable_password()
    identity = OidcIdentity.objects.get(user=user)
    assert (identity.issuer, identity.subject) == (provider.base, "u-rita")
    assert client.get("/reviews/").status_code == 200


def test_later_logins_match_by_sub_and_reapply_the_claims(
    client: Client, provider: FakeProvider
) -> None:
    sso_login(client, provider)
    rita = User.objects.get(username="rita")
    rita.groups.add(Group.objects.create(name="hand-given"))  # not in the map: left alone
    client.logout()

    provider.claims |= {
        "email": "rita@new.example.com",
        "groups": ["legal"],
        "roles": ["sluice-operator"],
    }
    sso_login(client, provider)
    assert logged_in_user(client) == rita and User.objects.count() == 1
    rita.refresh_from_db()
    assert set(rita.groups.values_list("name", flat=True)) == {"legal", "hand-given"}
    assert rita.is_staff and not rita.is_superuser

    client.logout()
    provider.claims |= {"groups": [], "roles": "viewer", "tenant": "globex"}
    sso_login(client, provider)
    rita.refresh_from_db()
    assert set(rita.groups.values_list("name", flat=True)) == {"hand-given"}
    assert not rita.is_staff  # revoked at the provider: revoked here at the next login
    assert TenantMembership.objects.get(user=rita).tenant == "globex"


def test_logout_ends_an_sso_session(client: Client, provider: FakeProvider) -> None:
    sso_login(client, provider)
    assert client.get("/reviews/").status_code == 200
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert logged_in_user(client) is None
    assert client.get("/reviews/")["Location"].startswith("/accounts/login/?next=")


def test_a_local_username_is_never_reused_by_sso(client: Client, provider: FakeProvider) -> None:
    local = User.objects.create_user("rita", email="rita.local@example.com", password="pw-x-123")
    sso_login(client, provider)
    user = logged_in_user(client)
    assert user is not None and user != local and user.username.startswith("rita-")


# --- refused ------------------------------------------------------------------------------


def test_a_forged_state_is_refused(client: Client, provider: FakeProvider) -> None:
    callback = to_provider(client, provider)
    url = urlsplit(callback)
    code = parse_qs(url.query)["code"][0]
    assert_refused(client, client.get(url.path, {"code": code, "state": "forged"}))
    # The callback in another browser (no state in its session) is refused too.
    other = Client()
    assert_refused(other, other.get(callback))
    assert not User.objects.exists()


def test_a_replayed_callback_is_refused(client: Client, provider: FakeProvider) -> None:
    callback = to_provider(client, provider)
    assert client.get(callback)["Location"] == "/reviews/"
    client.logout()
    assert_refused(client, client.get(callback))


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"aud": "another-client"}, id="wrong-audience"),
        pytest.param({"iss": "http://127.0.0.2:9/"}, id="wrong-issuer"),
        pytest.param(
            {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, id="expired"
        ),
        pytest.param({"nonce": "another-nonce"}, id="wrong-nonce"),
        pytest.param({"sub": "u-someone-else"}, id="userinfo-of-another-subject"),
    ],
)
def test_a_bad_id_token_is_refused(
    client: Client, provider: FakeProvider, forged: dict[str, Any]
) -> None:
    provider.id_token_overrides = forged
    assert_refused(client, sso_login(client, provider))
    assert not User.objects.exists()


def test_a_token_signed_with_another_key_is_refused(client: Client, provider: FakeProvider) -> None:
    provider.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_refused(client, sso_login(client, provider))
    assert not User.objects.exists()


def test_an_email_equal_to_a_local_admins_does_not_log_in_as_that_admin(
    client: Client, provider: FakeProvider
) -> None:
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    provider.claims = {"sub": "attacker", "email": "ADMIN@example.com", "groups": []}
    assert_refused(client, sso_login(client, provider))
    assert User.objects.count() == 1 and not OidcIdentity.objects.exists()

    # Once an administrator links a local account to an identity, that identity (its sub,
    # whatever its e-mail) signs in to it; the claims then decide staff, as for any SSO user.
    lou = User.objects.create_user("lou", email="lou@example.com", is_staff=True)
    OidcIdentity.objects.create(user=lou, issuer=provider.base, subject="u-lou")
    provider.claims = {"sub": "u-lou", "email": "admin@example.com", "groups": ["legal"]}
    sso_login(client, provider)
    assert logged_in_user(client) == lou
    lou.refresh_from_db()
    assert not lou.is_staff and lou.email == "lou@example.com"
    admin.refresh_from_db()
    assert admin.is_superuser and admin.is_staff


def test_a_tenant_outside_the_allow_list_is_refused(
    client: Client, provider: FakeProvider, settings: Any
) -> None:
    settings.SLUICE_OIDC_TENANTS = ["acme"]
    provider.claims["tenant"] = "globex"
    assert_refused(client, sso_login(client, provider))
    assert not User.objects.exists()


def test_an_unreachable_provider_is_a_message_not_a_500(client: Client, settings: Any) -> None:
    settings.OIDC_RP_CLIENT_ID = "sluice-test"
    settings.OIDC_OP_DISCOVERY_URL = "http://127.0.0.1:9/.well-known/openid-configuration"
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 302 and response["Location"] == FAILURE_URL


def test_an_administrator_links_an_account_on_the_user_admin_page(
    client: Client, provider: FakeProvider
) -> None:
    lou = User.objects.create_user("lou", email="lou@example.com")
    admin = User.objects.create_superuser("admin", "admin@example.com", "pw-admin-123")
    client.force_login(admin)
    page = client.get(f"/admin/auth/user/{lou.pk}/change/")
    assert b"Single sign-on identities" in page.content
    form = {
        "username": "lou",
        "email": "lou@example.com",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00",
        "tenant_membership-TOTAL_FORMS": "0",
        "tenant_membership-INITIAL_FORMS": "0",
        "oidc_identities-TOTAL_FORMS": "1",
        "oidc_identities-INITIAL_FORMS": "0",
        "oidc_identities-0-issuer": provider.base,
        "oidc_identities-0-subject": "u-lou",
    }
    response = client.post(f"/admin/auth/user/{lou.pk}/change/", form)
    assert response.status_code == 302, response.content[:2000]
    client.logout()

    provider.claims = {"sub": "u-lou", "email": "lou@example.com"}
    sso_login(client, provider)
    assert logged_in_user(client) == lou


def test_next_may_not_leave_the_site(client: Client, provider: FakeProvider) -> None:
    response = sso_login(client, provider, next="https://evil.example/phish")
    assert response.status_code == 302 and response["Location"] == "/reviews/"
    assert logged_in_user(client) is not None


def test_a_deactivated_sso_user_is_logged_out(client: Client, provider: FakeProvider) -> None:
    """As a password session is: the library's backend did not check ``is_active``, so the
    session went on (any page needing only a login, like changing the password, stayed open)."""
    sso_login(client, provider)
    User.objects.filter(username="rita").update(is_active=False)
    r = client.get("/accounts/password_change/")
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


def test_a_providers_error_logs_nobody_out(client: Client, provider: FakeProvider) -> None:
    """Any page can make a browser GET the callback with ``?error=`` (an <img>): the library
    logged whoever was in out. It is a failed SSO attempt, and the session stays."""
    User.objects.create_user("lou", password="pw-lou-123")
    client.post("/accounts/login/", {"username": "lou", "password": "pw-lou-123"})
    r = client.get("/oidc/callback/?error=access_denied&state=forged")
    assert r.status_code == 302 and r["Location"] == "/accounts/login/?sso=failed"
    user = logged_in_user(client)
    assert user is not None and user.username == "lou"
    # Starting a sign-in is not a callback: an ``error`` there means nothing, and it still
    # goes to the provider.
    start = client.get("/oidc/authenticate/", {"error": "x"})
    assert start.status_code == 302 and start["Location"].startswith(f"{provider.base}/authorize?")
