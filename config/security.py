"""Login throttling: too many failed logins lock a username, or a client address, out for a while.

1. Before checking a password, the login form asks ``locked_out``: a username with
   ``SLUICE_LOGIN_MAX_FAILURES`` failures, or a client address with
   ``SLUICE_LOGIN_MAX_FAILURES_PER_IP`` failures, within the last
   ``SLUICE_LOGIN_WINDOW_SECONDS``, is refused without the password being tried, so guessing
   cannot go on during a lockout.
2. A failed login appends its time to both lists (``record_failure``); a successful one clears
   the username's list. The address's list is not cleared, or an attacker holding one account
   could reset the count of the address they guess from.
3. Every failure and every refused attempt is logged on ``sluice.security`` with the username
   and client address, never the password.
4. The password-change forms (``/accounts/password_change/`` and the admin's) ask for the current
   password: another place to guess it, from a session left open or taken. A wrong one counts as
   a failed login of the user's username, and during a lockout the form is refused (429) without
   checking it, as the login pages are.

The lists live in Django's cache, which every web process must share (settings.CACHES). A lockout
lifts when its oldest counted failure leaves the window. Appending is read-modify-write, so two
processes failing at the same instant may count one failure instead of two: a throttle, not
an exact count, and the next attempts are still counted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm, AdminPasswordChangeForm
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm
from django.contrib.auth.views import LoginView, PasswordChangeView, PasswordResetView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.urls import reverse

log = logging.getLogger("sluice.security")

LOCKED = "locked"


def client_ip(request: HttpRequest | None) -> str:
    """The client address: REMOTE_ADDR, or the last entry of ``SLUICE_CLIENT_IP_HEADER``
    (the one the trusted proxy appended; earlier entries are whatever the client sent)."""
    if request is None:
        return "unknown"
    header = str(settings.SLUICE_CLIENT_IP_HEADER or "")
    raw = ""
    if header:
        raw = request.META.get("HTTP_" + header.upper().replace("-", "_"), "").split(",")[-1]
    raw = raw.strip() or str(request.META.get("REMOTE_ADDR") or "")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return "unknown"


def _key(kind: str, value: str) -> str:
    # Hashed: usernames may hold characters a cache backend does not accept in keys.
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"sluice:login-failures:{kind}:{digest}"


def _keys(username: str, ip: str) -> dict[str, tuple[str, int]]:
    return {
        "username": (_key("user", username.casefold()), int(settings.SLUICE_LOGIN_MAX_FAILURES)),
        "address": (_key("ip", ip), int(settings.SLUICE_LOGIN_MAX_FAILURES_PER_IP)),
    }


def _recent(key: str, now: float, window: float | None = None) -> list[float]:
    """The times stored at ``key`` within ``window`` seconds of ``now`` (the login window by
    default)."""
    if window is None:
        window = float(settings.SLUICE_LOGIN_WINDOW_SECONDS)
    stored = cache.get(key)
    if not isinstance(stored, list):
        return []
    return [t for t in stored if isinstance(t, (int, float)) and now - t < window]


def locked_out(username: str, ip: str, *, now: float | None = None) -> int:
    """Seconds until ``username`` (and ``ip``) may try again; 0 when not locked out."""
    now = time.time() if now is None else now
    window = float(settings.SLUICE_LOGIN_WINDOW_SECONDS)
    wait = 0.0
    for key, limit in _keys(username, ip).values():
        recent = _recent(key, now)
        if limit > 0 and len(recent) >= limit:
            # The lockout lifts when enough failures age out to bring the count under the limit.
            wait = max(wait, sorted(recent)[-limit] + window - now)
    return math.ceil(wait) if wait > 0 else 0


def record_failure(
    username: str, ip: str, *, now: float | None = None, what: str = "login failed"
) -> None:
    """Count a failed password guess for ``username`` and for ``ip``, and log it as ``what``."""
    now = time.time() if now is None else now
    timeout = int(settings.SLUICE_LOGIN_WINDOW_SECONDS) + 60
    counts = {}
    for kind, (key, limit) in _keys(username, ip).items():
        # Keep no more than the limit needs, so a flood of failures stores a bounded list.
        recent = (_recent(key, now) + [now])[-max(limit, 1) :]
        cache.set(key, recent, timeout)
        counts[kind] = len(recent)
    log.warning(
        "%s: username=%r ip=%s failures_for_username=%d failures_from_ip=%d",
        what,
        username,
        ip,
        counts["username"],
        counts["address"],
    )


def record_success(username: str) -> None:
    cache.delete(_key("user", username.casefold()))


def lockout_error(wait: int) -> forms.ValidationError:
    """The refusal during a lockout with ``wait`` seconds left, on every form that takes a
    password."""
    minutes = max(1, math.ceil(wait / 60))
    return forms.ValidationError(
        "Too many failed logins for this account or from your address. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
        code=LOCKED,
    )


class ThrottledLoginMixin:
    """For an ``AuthenticationForm``: refuse during a lockout, count failures, reset on
    success."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")
        ip = client_ip(self.request)
        wait = locked_out(username, ip)
        if wait:
            log.warning("login refused (locked out): username=%r ip=%s", username, ip)
            raise lockout_error(wait)
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except forms.ValidationError as exc:
            if username and self.cleaned_data.get("password") is not None:
                if getattr(exc, "code", None) == "invalid_login":
                    record_failure(username, ip)
            raise
        if username:
            record_success(username)
        return cleaned

    @property
    def locked(self) -> bool:
        errors = getattr(self, "errors", None)
        return bool(errors) and any(
            e.code == LOCKED
            for e in self.non_field_errors().as_data()  # type: ignore[attr-defined]
        )


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


class ThrottledLoginView(LoginView):
    """The login page: a locked-out attempt gets 429 and the page with the lockout message."""

    form_class = ThrottledAuthenticationForm

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        """Offers "Sign in with <provider>" when single sign-on is configured (config.oidc)."""
        from config.oidc import login_link  # noqa: PLC0415  (config.oidc imports models)

        return super().get_context_data(**kwargs) | {"sso": login_link()}

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "locked", False):
            response.status_code = 429
        return response


class ThrottledPasswordChangeMixin:
    """For a ``PasswordChangeForm``: the current password is checked as a login checks it.
    During a lockout of the user's username (or of the client's address) it is not checked at
    all; a wrong one is a failed login of the username; a right one clears the username's
    count, as a successful login does. The form needs the request (``request=``) for the
    client's address."""

    user: Any
    request: HttpRequest | None = None

    def __init__(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
        self.request = request
        super().__init__(*args, **kwargs)

    def clean_old_password(self) -> str:
        username = str(self.user.get_username())
        ip = client_ip(self.request)
        wait = locked_out(username, ip)
        if wait:
            log.warning("password change refused (locked out): username=%r ip=%s", username, ip)
            raise lockout_error(wait)
        try:
            old: str = super().clean_old_password()  # type: ignore[misc]
        except forms.ValidationError as exc:
            if exc.code == "password_incorrect":
                record_failure(username, ip, what="password change failed (wrong old password)")
            raise
        record_success(username)
        return old

    @property
    def locked(self) -> bool:
        return bool(self.has_error("old_password", LOCKED))  # type: ignore[attr-defined]


class ThrottledPasswordChangeForm(ThrottledPasswordChangeMixin, PasswordChangeForm):
    pass


class ThrottledAdminPasswordChangeForm(ThrottledPasswordChangeMixin, AdminPasswordChangeForm):
    pass


class ThrottledPasswordChangeView(PasswordChangeView):
    """``/accounts/password_change/`` (and, through ``SluiceAdminSite``, the admin's): the
    throttled form, given the request; a refusal during a lockout is a 429."""

    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return super().get_form_kwargs() | {"request": self.request}

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "locked", False):
            response.status_code = 429
        return response


class SluiceAdminSite(AdminSite):
    """The admin site (``config.apps.SluiceAdminConfig`` makes it ``admin.site``): its login
    and password change are throttled like the other login page's, with the same 429."""

    login_form = ThrottledAdminAuthenticationForm
    password_change_form = ThrottledAdminPasswordChangeForm

    @login_not_required
    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().login(request, extra_context)
        form = (getattr(response, "context_data", None) or {}).get("form")
        if getattr(form, "locked", False):
            response.status_code = 429
        return response

    # django-stubs says a TemplateResponse; once the password is changed, it is a redirect.
    def password_change(  # type: ignore[override]
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponseBase:
        """As ``AdminSite.password_change``, through the throttled view (Django's hands the
        form no request, so it could not tell the client's address)."""
        defaults: dict[str, Any] = {
            "form_class": self.password_change_form,
            "success_url": reverse("admin:password_change_done", current_app=self.name),
            "extra_context": {**self.each_context(request), **(extra_context or {})},
            "template_name": self.password_change_template
            or "registration/password_change_form.html",
        }
        request.current_app = self.name
        return ThrottledPasswordChangeView.as_view(**defaults)(request)


def reset_allowed(email: str, ip: str, *, now: float | None = None) -> bool:
    """Count a password-reset request for ``email`` from ``ip``; False once either has made
    ``SLUICE_PASSWORD_RESET_MAX_PER_EMAIL`` / ``_PER_IP`` within
    ``SLUICE_PASSWORD_RESET_WINDOW_SECONDS`` (then no mail is sent)."""
    now = time.time() if now is None else now
    window = float(settings.SLUICE_PASSWORD_RESET_WINDOW_SECONDS)
    allowed = True
    for kind, value, limit in (
        ("reset-email", email.casefold(), int(settings.SLUICE_PASSWORD_RESET_MAX_PER_EMAIL)),
        ("reset-ip", ip, int(settings.SLUICE_PASSWORD_RESET_MAX_PER_IP)),
    ):
        key = _key(kind, value)
        recent = _recent(key, now, window)
        if limit > 0 and len(recent) >= limit:
            allowed = False
        cache.set(key, (recent + [now])[-max(limit, 1) :], int(window) + 60)
    return allowed


class ThrottledPasswordResetView(PasswordResetView):
    """``/accounts/password_reset/``: the page anyone may use. Past the limits it answers as
    always (saying nothing about whether the address has an account) but sends nothing, so
    it cannot be used to flood an inbox or the mail server."""

    def form_valid(self, form: Any) -> HttpResponse:
        email = str(form.cleaned_data.get("email") or "")
        ip = client_ip(self.request)
        if not reset_allowed(email, ip):
            log.warning("password reset not sent (too many requests): email=%r ip=%s", email, ip)
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's "form expired" page (templates/403_csrf.html), except for one case that is not
    an expired form but a second tab: the login form of a tab that showed it before the user
    signed in in another tab is posted with the token the sign-in replaced. The user is signed
    in now, so on to the page the form was for (a safe ``next``), not a 403 that loses the
    password typed and offers a "Log in" back to the same page."""
    from django.utils.http import url_has_allowed_host_and_scheme  # noqa: PLC0415
    from django.views.csrf import csrf_failure as django_csrf_failure  # noqa: PLC0415

    if (
        request.method == "POST"
        and request.path == reverse("login")
        and getattr(request, "user", None) is not None
        and request.user.is_authenticated
    ):
        target = request.POST.get("next") or request.GET.get("next") or ""
        if not url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            target = str(settings.LOGIN_REDIRECT_URL)
        return HttpResponseRedirect(target)
    return django_csrf_failure(request, reason)
