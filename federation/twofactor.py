"""The second factor: time-based one-time passwords (RFC 6238) through django-otp.

Who is asked for a code after the password:

* anyone who enrolled a confirmed TOTP device (whatever the settings);
* when `FEDGOV_REQUIRE_ADMIN_2FA` is true, every administrator (the administrators group or a
  superuser); one without a device enrols one at that step before the session opens.

A correct password for such a user does not open a session: it leaves a short-lived
"pending" note in the session (the user's id, the backend, where to go next), and only the
code turns it into a logged-in, OTP-verified session (`django_otp.login`). The web login and
the admin login both work this way; `SecondFactorMiddleware` ends any session that owes a
code and has none (one opened before the setting was switched on, say).

API tokens are not affected: a token is its own credential, created by a signed-in (and so
verified) user. The API's password exchange (`/api/v1/auth/token/`) refuses users who owe a
code, so a password alone never becomes a token either.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import get_user_model, logout
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode
from django_otp.plugins.otp_totp.models import TOTPDevice

from fedgov.errors import PermissionDenied

from .access import is_administrator

PENDING_SESSION_KEY = "fedgov.2fa_pending"
PENDING_SECONDS = 300  # the code must follow the password within five minutes
MSG_SECOND_FACTOR_REQUIRED = "This account signs in with a one-time code after its password; use the web login."


class SecondFactorRequired(PermissionDenied):
    """A password was right, but this user also owes a one-time code (the API has no code step)."""

    code = "second_factor_required"


def confirmed_device(user) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()


def enrolment_device(user) -> TOTPDevice:
    """The user's unconfirmed device (its secret shown until a code confirms it), made once."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    return device


def device_confirm(device: TOTPDevice) -> None:
    """A first right code confirms an enrolled device: the next login asks for a code."""
    device.confirmed = True
    device.save(update_fields=["confirmed"])


def devices_remove(user) -> None:
    """Two-factor sign-in off for `user` (the caller checked a current code)."""
    TOTPDevice.objects.filter(user=user).delete()


def needs_second_factor(user) -> bool:
    """Whether a session of `user` must pass a one-time code."""
    if user is None or not user.is_authenticated:
        return False
    if settings.FEDGOV_REQUIRE_ADMIN_2FA and is_administrator(user):
        return True
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def start_pending(request, user, *, next_url: str) -> None:
    """The password was right but a code is owed: remember who, for a few minutes, without
    logging in. A new session key, so a pending note is never planted in someone's session."""
    request.session.cycle_key()
    request.session[PENDING_SESSION_KEY] = {
        "user": user.pk,
        "backend": getattr(user, "backend", None) or settings.AUTHENTICATION_BACKENDS[0],
        "next": next_url,
        "until": time.time() + PENDING_SECONDS,
    }


def pending_user(request):
    """The user whose password was just accepted and who owes a code, or None."""
    note = request.session.get(PENDING_SESSION_KEY)
    if not note or note.get("until", 0) < time.time():
        request.session.pop(PENDING_SESSION_KEY, None)
        return None
    user = get_user_model().objects.filter(pk=note["user"], is_active=True).first()
    if user is not None:
        user.backend = note["backend"]
    return user


def pending_next(request) -> str:
    return (request.session.get(PENDING_SESSION_KEY) or {}).get("next") or settings.LOGIN_REDIRECT_URL


def clear_pending(request) -> None:
    request.session.pop(PENDING_SESSION_KEY, None)


def verify_url(next_url: str = "") -> str:
    url = reverse("account_login_verify")
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


class SecondFactorMiddleware:
    """A logged-in session that owes a code and has not given one is ended and sent to the
    login page. After `django_otp.middleware.OTPMiddleware` (request.user.is_verified)."""

    EXEMPT_PREFIXES = ("/static/",)

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and not request.path.startswith(self.EXEMPT_PREFIXES)
            and not user.is_verified()
            and needs_second_factor(user)
        ):
            logout(request)
            if request.path.startswith("/api/"):
                return self.get_response(request)  # the API answers the now anonymous request
            return redirect(f"{settings.LOGIN_URL}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)
