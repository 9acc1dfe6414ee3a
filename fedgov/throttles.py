"""Failed-authentication limits: password guesses (the web login, the admin login and the API's
password exchange) and token guesses (the API's `Authorization: Token`).

The client is identified by DRF's `get_ident` under the `NUM_PROXIES` setting: with no trusted
proxy (the default) the socket's address, and `X-Forwarded-For` is ignored; behind N proxies,
the Nth address from the right of `X-Forwarded-For` (the one the outermost trusted proxy saw).
A client-supplied header therefore never picks the key a guess is counted under.

Password failures count twice, per client and per username, so neither rotating addresses
against one account nor one address against many accounts gets more than the limit. Counters
live in Django's cache (Redis in production, shared by every web process) and grow with the
cache's atomic `incr`, so concurrent guesses cannot overwrite each other's counts.
"""

from __future__ import annotations

import hashlib
import math
import time

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

MSG_LOCKED_OUT = "Too many failed login attempts; try again in {wait}."


def client_ident(request) -> str:
    """The client's address, trusting `X-Forwarded-For` only as far as `NUM_PROXIES` says
    (DRF's `BaseThrottle.get_ident`, the same rule DRF's own throttles use)."""
    return BaseThrottle().get_ident(request) or ""


class FailureLimit:
    """At most `limit` failures per key in a window of `window` seconds from the key's first
    failure; the key is refused until the window ends."""

    def __init__(self, name: str, limit: int, window: int) -> None:
        self.name, self.limit, self.window = name, limit, window

    def _cache_keys(self, kind: str, value: str) -> tuple[str, str]:
        digest = hashlib.sha256(value.encode()).hexdigest()[:40]
        base = f"fedgov:failed:{self.name}:{kind}:{digest}"
        return f"{base}:n", f"{base}:since"

    def wait(self, keys: list[tuple[str, str]]) -> int:
        """Seconds until every key may try again; 0 when none is over the limit."""
        pairs = [self._cache_keys(*key) for key in keys]
        values = cache.get_many([k for pair in pairs for k in pair])
        now = time.time()
        wait = 0
        for count_key, since_key in pairs:
            if values.get(count_key, 0) >= self.limit:
                since = values.get(since_key)
                wait = max(wait, math.ceil(since + self.window - now) if since is not None else 1, 1)
        return wait

    def record(self, keys: list[tuple[str, str]]) -> None:
        now = time.time()
        for key in keys:
            count_key, since_key = self._cache_keys(*key)
            cache.add(since_key, now, self.window)
            if cache.add(count_key, 1, self.window):
                continue
            try:
                cache.incr(count_key)
            except ValueError:  # expired between add and incr: this failure opens a new window
                cache.add(count_key, 1, self.window)


def password_failures() -> FailureLimit:
    return FailureLimit("password", settings.FEDGOV_LOGIN_FAILURE_LIMIT, settings.FEDGOV_LOGIN_LOCKOUT_MINUTES * 60)


def _password_keys(request, username: str) -> list[tuple[str, str]]:
    return [("client", client_ident(request)), ("user", username.strip().casefold())]


def password_wait(request, username: str) -> int:
    """Seconds before `username` may be tried again from this client; 0: now."""
    return password_failures().wait(_password_keys(request, username))


def password_failed(request, username: str) -> None:
    password_failures().record(_password_keys(request, username))


def locked_out_message(wait: int) -> str:
    minutes = max(1, math.ceil(wait / 60))
    return MSG_LOCKED_OUT.format(wait=f"{minutes} minute" if minutes == 1 else f"{minutes} minutes")


def locked_out_message_localised(wait: int) -> str:
    """locked_out_message in the request's language, for the login pages (the API's stays English)."""
    from django.utils.translation import gettext, ngettext

    minutes = max(1, math.ceil(wait / 60))
    return gettext("Too many failed login attempts; try again in %(wait)s.") % {
        "wait": ngettext("%(n)s minute", "%(n)s minutes", minutes) % {"n": minutes}
    }


class ThrottledLoginMixin:
    """An authentication form that refuses a locked-out client or username before the password
    is even checked (so the right password is refused too), and counts each wrong password."""

    locked_out_message = ""

    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()  # a missing field: nothing was guessed
        wait = password_wait(self.request, username)
        if wait:
            self.locked_out_message = locked_out_message_localised(wait)
            raise forms.ValidationError(self.locked_out_message, code="locked_out")
        try:
            return super().clean()
        except forms.ValidationError:
            if self.get_user() is None:  # a wrong password (not a right one refused for another reason)
                password_failed(self.request, username)
            raise


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


def locked_out_is_429(response):
    """A login page refused for too many failures answers 429 Too Many Requests."""
    form = (getattr(response, "context_data", None) or {}).get("form")
    if getattr(form, "locked_out_message", ""):
        response.status_code = 429
    return response


class ThrottledLoginView(LoginView):
    authentication_form = ThrottledAuthenticationForm
    template_name = "registration/login.html"

    def form_invalid(self, form):
        return locked_out_is_429(super().form_invalid(form))
