"""Single sign-on with OpenID Connect (mozilla-django-oidc), configured from the environment.

SSO is off unless ``OIDC_RP_CLIENT_ID`` is set: the backend is then not installed, the two
routes answer 404 and the login page shows no provider button; local accounts work either way.

What this module adds to the library, and why:

- **Discovery.** The provider's endpoints and issuer come from ``OIDC_OP_DISCOVERY_URL``
  (fetched once per process, lazily: never at import) unless set one by one.
- **A stricter ID token check.** The library verifies the signature (RS256 against the JWKS)
  and the nonce, but not the audience or the issuer; here ``aud`` must name our client,
  ``iss`` must be the provider's, and ``exp``/``iat`` must be present and current.
- **Matching by ``(iss, sub)``, never by e-mail.** The library finds users by e-mail, which lets
  anyone who controls an address at the provider sign in as the local account with that
  address (a local admin's, say). Here a user is found through ``OidcIdentity`` only; a first
  login creates a new account, and is refused when its e-mail already belongs to an account
  not linked to that identity (an administrator links it; docs/security.md).
- **Claims mapped through allow-lists.** Groups only through ``SLUICE_OIDC_GROUP_MAP``, the
  tenant only from ``SLUICE_OIDC_TENANTS`` when set, staff only from a configured claim value;
  never superuser. They are applied again at every login, so a change at the provider (a
  group removed, staff revoked) takes effect at the next sign-in.
- **Claims checked before anything is stored.** ``sub``, ``iss``, ``email``, the tenant and the
  names must fit their columns and hold no NUL, control character or lone surrogate, else the
  login is refused (logged). An ``email`` that is not an e-mail address is not stored (logged):
  the account is created without one. A first login creates the account, its identity and its
  tenant membership in one transaction: a failure leaves nothing half-made.
- **Failures are a redirect to the login page** with a message (bad state, a rejected token, an
  unreachable provider, a claim that cannot be stored), never a 500; the reason is logged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation, ValidationError
from django.core.validators import EmailValidator
from django.db import DatabaseError, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from workflows.models import OidcIdentity, TenantMembership

logger = logging.getLogger("sluice.security")

BACKEND = "config.oidc.SluiceOIDCBackend"
FAILURE_URL = "/accounts/login/?sso=failed"

# Settings the provider's discovery document supplies when they are not set explicitly.
DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    "OIDC_OP_ISSUER": "issuer",
}

_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")


def oidc_enabled() -> bool:
    return bool(getattr(settings, "OIDC_RP_CLIENT_ID", ""))


@functools.lru_cache(maxsize=8)
def _discovery(url: str, timeout: float) -> dict[str, Any]:
    response = requests.get(url, timeout=timeout)
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc


def oidc_setting(attr: str, *default: Any) -> Any:
    """A setting for mozilla-django-oidc, the OP endpoints filled in from discovery."""
    value = getattr(settings, attr, None)
    if attr in DISCOVERED and not value:
        url = getattr(settings, "OIDC_OP_DISCOVERY_URL", "")
        if url:
            value = _discovery(url, float(getattr(settings, "OIDC_TIMEOUT", 10)))
            value = value.get(DISCOVERED[attr])
    if value is None or (attr in DISCOVERED and not value):
        if default:
            return default[0]
        raise ImproperlyConfigured(f"Setting {attr} not found (SSO: docs/security.md)")
    return value


def login_link() -> dict[str, str] | None:
    """What the login page needs to offer SSO, or None when it is off."""
    if not oidc_enabled():
        return None
    return {"name": settings.SLUICE_OIDC_PROVIDER_NAME, "url": "/oidc/authenticate/"}


def parse_group_map(text: str) -> dict[str, str]:
    """``"idp-a=local-a,shared"`` → ``{"idp-a": "local-a", "shared": "shared"}``."""
    mapping = {}
    for item in text.split(","):
        claim, _, local = item.strip().partition("=")
        if claim.strip():
            mapping[claim.strip()] = (local or claim).strip()
    return mapping


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def claims_grant_staff(claims: dict[str, Any]) -> bool:
    """Staff only when the configured claim holds the configured value; never by default."""
    name, value = settings.SLUICE_OIDC_STAFF_CLAIM, settings.SLUICE_OIDC_STAFF_VALUE
    return bool(name and value) and value in _as_list(claims.get(name))


def claimed_tenant(claims: dict[str, Any]) -> str:
    value = claims.get(settings.SLUICE_OIDC_TENANT_CLAIM, "")
    return value if isinstance(value, str) else ""


def _unprintable(c: str) -> bool:
    """NUL and the other C0 and C1 control characters, and lone surrogates (which no column
    can store)."""
    n = ord(c)
    return n < 0x20 or 0x7F <= n <= 0x9F or 0xD800 <= n <= 0xDFFF


def unstorable(value: str, max_length: int | None) -> str | None:
    """Why ``value`` cannot be stored as a claim (too long, or a character no column should
    hold), or None when it can."""
    if max_length is not None and len(value) > max_length:
        return f"is longer than {max_length} characters ({len(value)})"
    if any(_unprintable(c) for c in value):
        return "contains a NUL, a control character or a lone surrogate"
    return None


_email_validator = EmailValidator()


def claimed_email(claims: dict[str, Any]) -> str:
    """The ``email`` claim when it is an e-mail address, else ``""`` (logged): an address that
    is not one would be the account's, and every mail to it would fail."""
    value = claims.get("email")
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            _email_validator(value)
        except ValidationError:
            pass
        else:
            return value
    logger.warning(
        "SSO: the email claim of sub %r is not an e-mail address (%r); it is not stored",
        str(claims.get("sub"))[:100],
        str(value)[:100],
    )
    return ""


class SluiceOIDCBackend(OIDCAuthenticationBackend):
    """The OIDC backend, in AUTHENTICATION_BACKENDS only when SSO is configured."""

    get_settings = staticmethod(oidc_setting)

    def get_user(self, user_id: Any) -> Any:
        """The session's user, unless deactivated since: a session started through SSO ends
        when an administrator deactivates the account, as a password session does
        (ModelBackend checks ``is_active``; the library's backend does not)."""
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        # Only the callback view passes a nonce: a password login whose URL happens to carry
        # ``code`` and ``state`` must never start a token exchange.
        if "nonce" not in kwargs or not oidc_enabled():
            return None
        return super().authenticate(request, **kwargs)

    def verify_token(self, token: Any, **kwargs: Any) -> Any:
        if not token:
            raise SuspiciousOperation("The token response carried no ID token.")
        try:
            return super().verify_token(token, **kwargs)
        except (jwt.InvalidTokenError, jwt.PyJWKError, KeyError) as exc:
            raise SuspiciousOperation(f"ID token rejected: {exc!r}") from exc

    def _verify_jws(self, payload: Any, key: Any) -> Any:
        """Signature with the configured algorithm only, plus audience, issuer and expiry."""
        alg = jwt.get_unverified_header(payload).get("alg")
        if alg != self.OIDC_RP_SIGN_ALGO:
            raise SuspiciousOperation(f"ID token algorithm {alg!r} is not {self.OIDC_RP_SIGN_ALGO}")
        return jwt.decode(
            payload,
            key,
            algorithms=[self.OIDC_RP_SIGN_ALGO],
            audience=self.OIDC_RP_CLIENT_ID,
            issuer=oidc_setting("OIDC_OP_ISSUER"),
            leeway=settings.SLUICE_OIDC_LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )

    def get_userinfo(self, access_token: Any, id_token: Any, payload: Any) -> dict[str, Any]:
        """The ID token's claims, completed by the userinfo endpoint's (same ``sub`` only)."""
        info = super().get_userinfo(access_token, id_token, payload)
        if str(info.get("sub", payload["sub"])) != str(payload["sub"]):
            raise SuspiciousOperation("userinfo answered for another subject")
        return {**payload, **info, "iss": payload["iss"], "sub": str(payload["sub"])}

    def _claim_limits(self) -> dict[str, int | None]:
        """The claims stored as they are, and the length of their column (the names are cut
        to theirs)."""
        user_field = self.UserModel._meta.get_field
        return {
            "sub": OidcIdentity._meta.get_field("subject").max_length,
            "iss": OidcIdentity._meta.get_field("issuer").max_length,
            "email": user_field("email").max_length,
            settings.SLUICE_OIDC_TENANT_CLAIM: TenantMembership._meta.get_field(
                "tenant"
            ).max_length,
            "given_name": None,
            "family_name": None,
        }

    def unstorable_claim(self, claims: dict[str, Any]) -> str | None:
        """Why a claim of ``claims`` cannot be stored, or None."""
        for name, max_length in self._claim_limits().items():
            value = claims.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            if isinstance(value, str):
                why = unstorable(value, max_length)
                if why:
                    return f"claim {name!r} {why}"
        return None

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        why = self.unstorable_claim(claims)
        if why:
            logger.warning("SSO login refused: %s (sub %r)", why, str(claims.get("sub", ""))[:100])
            return False
        allowed = settings.SLUICE_OIDC_TENANTS
        if allowed and claimed_tenant(claims) not in allowed:
            logger.warning(
                "SSO login refused: tenant %r of sub %s is not in SLUICE_OIDC_TENANTS",
                claimed_tenant(claims),
                claims.get("sub"),
            )
            return False
        return bool(claims.get("sub") and claims.get("iss"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return self.UserModel.objects.filter(
            oidc_identities__issuer=claims["iss"], oidc_identities__subject=claims["sub"]
        )

    def create_user(self, claims: dict[str, Any]) -> Any:
        email = claimed_email(claims)
        if email and self.UserModel.objects.filter(email__iexact=email).exists():
            logger.warning(
                "SSO login refused: sub %s claims e-mail %s of an existing account that is not "
                "linked to it",
                claims["sub"],
                email,
            )
            raise SuspiciousOperation("e-mail of an unlinked local account")
        # One transaction with the claims applied: an account is never left without its
        # tenant (a failure there would fail every later login the same way).
        with transaction.atomic():
            user = self.UserModel(username=self._free_username(claims), email=email)
            user.set_unusable_password()
            user.save()
            OidcIdentity.objects.create(user=user, issuer=claims["iss"], subject=claims["sub"])
            user = self.update_user(user, claims)
        logger.info("SSO created user %s for sub %s", user.username, claims["sub"])
        return user

    def _free_username(self, claims: dict[str, Any]) -> str:
        """``preferred_username`` (or the e-mail's local part), cleaned; suffixed with a hash of
        the subject when a local account already has it: a name never links accounts."""
        raw = str(claims.get("preferred_username") or str(claims.get("email") or "").split("@")[0])
        base = _USERNAME_UNSAFE.sub("", raw)[:120] or "sso-user"
        if not self.UserModel.objects.filter(username=base).exists():
            return base
        digest = hashlib.sha256(f"{claims['iss']} {claims['sub']}".encode()).hexdigest()
        return f"{base}-{digest[:10]}"

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        """Apply the mapped claims: staff flag, groups of the map, tenant membership."""
        with transaction.atomic():
            staff = claims_grant_staff(claims)
            names = {"first_name": "given_name", "last_name": "family_name"}
            changed = [
                f for f, c in names.items() if claims.get(c) and getattr(user, f) != claims[c]
            ]
            for field, claim in names.items():
                if field in changed:
                    setattr(user, field, str(claims[claim])[:150])
            if user.is_staff != staff:
                user.is_staff = staff
                changed.append("is_staff")
            if changed:
                user.save(update_fields=changed)
            self._sync_groups(user, claims)
            TenantMembership.objects.update_or_create(
                user=user, defaults={"tenant": claimed_tenant(claims)}
            )
        return user

    def _sync_groups(self, user: Any, claims: dict[str, Any]) -> None:
        """Groups named in the map follow the claim; groups outside it are left alone, and a
        claimed group the map does not name is ignored (logged), never created."""
        mapping = parse_group_map(settings.SLUICE_OIDC_GROUP_MAP)
        claimed = _as_list(claims.get(settings.SLUICE_OIDC_GROUPS_CLAIM))
        ignored = [g for g in claimed if g not in mapping]
        if ignored:
            logger.info("SSO ignored groups not in SLUICE_OIDC_GROUP_MAP: %s", ignored)
        wanted = {mapping[g] for g in claimed if g in mapping}
        managed = set(mapping.values())
        user.groups.remove(*user.groups.filter(name__in=managed - wanted))
        user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in sorted(wanted)))


class SluiceOIDCAuthenticate(OIDCAuthenticationRequestView):
    """``/oidc/authenticate/``: redirects to the provider with state, nonce and PKCE."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, **kwargs: Any) -> None:
        # The library reads the endpoints here; do it in get(), where a failure can answer.
        View.__init__(self, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not oidc_enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = oidc_setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
            self.OIDC_RP_CLIENT_ID = oidc_setting("OIDC_RP_CLIENT_ID")
        except (requests.RequestException, ValueError, ImproperlyConfigured) as exc:
            logger.error("SSO provider unavailable: %r", exc)
            return HttpResponseRedirect(FAILURE_URL)
        response: HttpResponse = super().get(request)
        return response


class SluiceOIDCCallback(OIDCAuthenticationCallbackView):
    """``/oidc/callback/``: the provider redirects back here with ``code`` and ``state``."""

    get_settings = staticmethod(oidc_setting)

    @property
    def failure_url(self) -> str:
        return FAILURE_URL

    def get(self, request: HttpRequest) -> HttpResponse:
        if not oidc_enabled():
            raise Http404("Single sign-on is not configured.")
        if request.GET.get("error"):
            # The provider refused the login. The library would also log out whoever is logged
            # in, and any page can send a browser here (an <img>): only the flow's state entry
            # goes, and the session stays as it was.
            states = request.session.get("oidc_states")
            if isinstance(states, dict) and states.pop(request.GET.get("state", ""), None):
                request.session.modified = True
            logger.warning("SSO login refused by the provider: %r", request.GET["error"][:100])
            return self.login_failure()
        try:
            response: HttpResponse = super().get(request)
        except (SuspiciousOperation, requests.RequestException, ValueError, DatabaseError) as exc:
            # DatabaseError: what the checks of verify_claims let through and the database
            # refuses (or two first logins of one identity at once) is a failed login too.
            logger.warning("SSO callback refused: %r", exc)
            return self.login_failure()
        if response.get("Location") == FAILURE_URL:
            logger.warning("SSO login failed (see the reason logged above)")
        return response
