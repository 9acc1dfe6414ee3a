"""Failed-authentication limits: password guesses (the web login, the admin login and the API's
password exchange) and token guesses (the API's `Authorization: Token`).

The client is identified by DRF's `get_ident` under the `NUM_PROXIES` setting: with no trusted
proxy (the default) the socket's address, and `X-Forwarded-For` is ignored; behind N proxies,
the Nth address from the right of `X-Forwarded-For` (the one the outermost trusted proxy saw).
A client-supplied header therefore never picks the key a guess is counted under.

Password failures count twice, per client and per username, so neither rotating addresses
against one account nor one address against many accounts gets more than the limit. The
failures are counted in Django's cache (Redis in production, shared by every web process) by
the cache's atomic `incr`, never by reading a count and writing it back: a guesser's parallel
failures are each counted (DRF's own throttles keep a history list read and rewritten per
request, which loses concurrent entries, so `FailureThrottle` takes DRF's rate parsing, cache
and clock but not its history). A guess is checked before its password is, so a guesser
running P requests in parallel gets at most the limit plus P guesses in a window.
"""

from __future__ import annotations

import hashlib
import math

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

MSG_LOCKED_OUT = "Too many failed login attempts; try again in {wait}."


def client_ident(request) -> str:
    """The client's address, trusting `X-Forwarded-For` only as far as `NUM_PROXIES` says
    (DRF's `BaseThrottle.get_ident`, the same rule DRF's own throttles use)."""
    return BaseThrottle().get_ident(request) or ""


class FailureThrottle(SimpleRateThrottle):
    """DRF's rate throttle applied to failures rather than requests: at most `rate` failures
    (DRF's `parse_rate`, plus a count of units, e.g. "10/15m") per key in a window that opens
    at the key's first failure; a key at the limit waits until its window closes.

    Per key, two cache entries that expire with the window: the time of the first failure
    (`cache.add`, so only the first writes it) and the count (`cache.add` of 1, else the
    cache's atomic `incr`). `check` reads every key in one cache round trip.
    """

    cache_format = "failed:%(scope)s:%(ident)s"

    def __init__(self, scope: str, rate: str) -> None:
        self.scope, self.rate = scope, rate
        super().__init__()

    def parse_rate(self, rate: str) -> tuple[int, int]:
        num, period = rate.split("/")
        units = period.rstrip("abcdefghijklmnopqrstuvwxyz")
        num_requests, duration = super().parse_rate(f"{num}/{period[len(units):]}")
        return num_requests, duration * int(units or 1)

    def cache_key(self, kind: str, value: str) -> str:
        digest = hashlib.sha256(value.encode()).hexdigest()[:40]
        return self.cache_format % {"scope": self.scope, "ident": f"{kind}:{digest}"}

    def check(self, keys: list[tuple[str, str]]) -> int:
        """Seconds until every key may try again; 0 when none is at the limit."""
        bases = [self.cache_key(*key) for key in keys]
        values = self.cache.get_many([f"{base}:{part}" for base in bases for part in ("n", "since")])
        now = self.timer()
        wait = 0
        for base in bases:
            if values.get(f"{base}:n", 0) < self.num_requests:
                continue
            since = values.get(f"{base}:since")
            if since is None:  # the count outlived its start by a moment: refuse for a second
                wait = max(wait, 1)
            elif since + self.duration > now:
                wait = max(wait, math.ceil(since + self.duration - now))
        return wait

    def record(self, keys: list[tuple[str, str]]) -> None:
        now = self.timer()
        for key in keys:
            base = self.cache_key(*key)
            count_key = f"{base}:n"
            self.cache.add(f"{base}:since", now, self.duration)
            if self.cache.add(count_key, 1, self.duration):
                continue
            try:
                if self.cache.incr(count_key) == 1:
                    # The entry expired between the cache's existence check and its INCR, which
                    # then made a count with no expiry: give it this failure's window.
                    self.cache.touch(count_key, self.duration)
            except ValueError:  # expired between add and incr: this failure opens a new window
                self.cache.add(count_key, 1, self.duration)


def password_failures() -> FailureThrottle:
    return FailureThrottle("password", f"{settings.FEDGOV_LOGIN_FAILURE_LIMIT}/{settings.FEDGOV_LOGIN_LOCKOUT_MINUTES}m")


def _password_keys(request, username: str) -> list[tuple[str, str]]:
    return [("client", client_ident(request)), ("user", username.strip().casefold())]


def password_wait(request, username: str) -> int:
    """Seconds before `username` may be tried again from this client; 0: now."""
    return password_failures().check(_password_keys(request, username))


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
