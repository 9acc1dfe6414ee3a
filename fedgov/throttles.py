"""Failed-authentication limits: password guesses (the web login, the admin login and the API's
password exchange) and token guesses (the API's `Authorization: Token`).

The client is identified by DRF's `get_ident` under the `NUM_PROXIES` setting: with no trusted
proxy (the default) the socket's address, and `X-Forwarded-For` is ignored; behind N proxies,
the Nth address from the right of `X-Forwarded-For` (the one the outermost trusted proxy saw).
A client-supplied header therefore never picks the key a guess is counted under.

Password failures count twice, per client and per username, so neither rotating addresses
against one account nor one address against many accounts gets more than the limit. The
failures are DRF's throttle history (`FailureThrottle`, a SimpleRateThrottle) in Django's cache
(Redis in production, shared by every web process). Like DRF's own throttles, a failure is
recorded by reading the key's history and writing it back, so two failures of one key recorded
at the same instant can count once; a guess is checked before its password is, so a guesser
running requests in parallel gains about its parallelism in guesses either way.
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
    (DRF's `parse_rate`, plus a count of units, e.g. "10/15m") per key in the sliding window;
    a key over it waits until its oldest counted failure leaves the window (DRF's `wait`).

    The history is DRF's (a list of timestamps per key in the cache, pruned to the window),
    kept under one key per (kind, value): `check` reads every key in one cache round trip
    and `record` adds a failure to each.
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

    def _load(self, key: str, history: list[float]) -> None:
        """Make `key` the throttle's current key, with its history pruned to the window."""
        self.key, self.history = key, list(history)
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()

    def check(self, keys: list[tuple[str, str]]) -> int:
        """Seconds until every key may try again; 0 when none is over the limit."""
        cache_keys = [self.cache_key(*key) for key in keys]
        histories = self.cache.get_many(cache_keys)
        self.now = self.timer()
        wait = 0
        for key in cache_keys:
            self._load(key, histories.get(key, []))
            if len(self.history) >= self.num_requests:
                # DRF's wait counts from the oldest entry, so the history holds at most the limit.
                del self.history[: len(self.history) - self.num_requests]
                wait = max(wait, math.ceil(self.wait()), 1)
        return wait

    def record(self, keys: list[tuple[str, str]]) -> None:
        self.now = self.timer()
        for key in keys:
            cache_key = self.cache_key(*key)
            self._load(cache_key, self.cache.get(cache_key, []))
            del self.history[self.num_requests - 1 :]  # the newest failures are the ones that count
            self.throttle_success()  # DRF's: the timestamp first in the history, the history cached


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
