"""Token authentication with hashed keys, scopes and expiry (`Authorization: Token <key>`),
and the throttles that keep password and token guessing slow."""

from __future__ import annotations

import time

from django.core.cache import cache
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions, throttling

from ..models import ApiToken

# Scopes (ApiToken.Scope): `read` for every GET, `trigger` to request a round, `approve` for
# governance decisions (sign, approve, reject, exit notice, and the administrator's writes).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class FailedAuthThrottle:
    """Refuses an address that sent too many invalid tokens: `rate` failures per window.

    Only failures count, so a well-behaved client is never slowed down, and a guesser is
    stopped (429) before its next guess is even looked up. The counter lives in Django's
    cache: with several web processes, give them a shared cache (Redis) so the limit holds
    across them.
    """

    scope = "failed_auth"
    default_rate = "20/min"
    cache_format = "fedgov_failed_auth_%s"

    def __init__(self) -> None:
        rate = throttling.SimpleRateThrottle.THROTTLE_RATES.get(self.scope, self.default_rate)
        self.num_failures, self.duration = throttling.SimpleRateThrottle.parse_rate(None, rate)

    def _key(self, request) -> str:
        return self.cache_format % throttling.BaseThrottle().get_ident(request)

    def _history(self, key: str, now: float) -> list[float]:
        return [t for t in cache.get(key, []) if t > now - self.duration]

    def check(self, request) -> None:
        now = time.time()
        history = self._history(self._key(request), now)
        if len(history) >= self.num_failures:
            raise exceptions.Throttled(wait=max(1, int(history[0] + self.duration - now)))

    def record_failure(self, request) -> None:
        key = self._key(request)
        now = time.time()
        cache.set(key, [*self._history(key, now), now], self.duration)


class LoginThrottle(throttling.ScopedRateThrottle):
    """The scoped throttle of the password endpoints (`throttle_scope = "login"`), per
    address: a password guesser gets 429 after the `login` rate (settings, 10/min)."""

    def get_cache_key(self, request, view):
        # Per address even when the request carries a session: the password is what is guessed.
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class ScopedTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"
    failed_auth_throttle_class = FailedAuthThrottle

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        throttle = self.failed_auth_throttle_class()
        throttle.check(request)
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            throttle.record_failure(request)
            raise

    def authenticate_credentials(self, key: str):
        token = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.hash_key(key)).first()
        if token is None or not token.is_valid():
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token


def token_scopes(request) -> set[str] | None:
    """The scopes of the request's token, or None for a session (a person in a browser)."""
    auth = getattr(request, "auth", None)
    return set(auth.scopes) if isinstance(auth, ApiToken) else None


def required_scope(request, view) -> str | None:
    """The scope `view` needs for this request: its `required_scope` (one name, or a mapping
    of method to name); reads need `read` unless said otherwise. None: a write whose view
    declared nothing, which a token may never do (fail closed)."""
    needed = getattr(view, "required_scope", None)
    if isinstance(needed, dict):
        needed = needed.get(request.method)
    if needed is None and request.method in SAFE_METHODS:
        needed = ApiToken.Scope.READ
    return needed


class HasScope(permissions.BasePermission):
    """A token must carry the scope the view needs; a session user (a person) passes."""

    message = "This token lacks the scope this operation needs."

    def has_permission(self, request, view) -> bool:
        scopes = token_scopes(request)
        if scopes is None:
            return True
        needed = required_scope(request, view)
        if needed is None:
            self.message = "Tokens cannot do this operation; sign in instead."
            return False
        if needed not in scopes:
            self.message = f"This token lacks the '{needed}' scope."
            return False
        return True
