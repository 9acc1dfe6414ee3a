"""Token authentication with hashed keys, scopes and expiry (`Authorization: Token <key>`),
and the throttles that keep password and token guessing slow."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions, throttling
from rest_framework.settings import api_settings

from fedgov.throttles import FailureThrottle, client_ident

from ..models import ApiToken
from ..token_cache import find_token, record_use

# Scopes (ApiToken.Scope): `read` for every GET, `trigger` to request a round, `approve` for
# governance decisions (sign, approve, reject, exit notice, and the administrator's writes).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class FailedAuthThrottle(FailureThrottle):
    """Refuses a client that sent too many invalid tokens: the `failed_auth` rate (settings,
    20/min) per client, the client as `NUM_PROXIES` identifies it (fedgov.throttles).

    Only failures count, so a well-behaved client is never slowed down, and a guesser is
    stopped (429) before its next guess is even looked up. The count lives in Django's
    cache, shared by every web process in production (Redis).
    """

    def __init__(self) -> None:
        super().__init__("failed_auth", api_settings.DEFAULT_THROTTLE_RATES.get("failed_auth") or "20/min")

    def check_request(self, request) -> None:
        wait = self.check([("client", client_ident(request))])
        if wait:
            raise exceptions.Throttled(wait=wait)

    def record_failure(self, request) -> None:
        self.record([("client", client_ident(request))])


class LoginThrottle(throttling.ScopedRateThrottle):
    """The scoped throttle of the password endpoints (`throttle_scope = "login"`), per
    client: a password guesser gets 429 after the `login` rate (settings, 10/min). Wrong
    passwords are also counted per client and per username (fedgov.throttles)."""

    def get_cache_key(self, request, view):
        # Per client even when the request carries a session: the password is what is guessed.
        return self.cache_format % {"scope": self.scope, "ident": client_ident(request)}


class ScopedTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"
    failed_auth_throttle_class = FailedAuthThrottle

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        throttle = self.failed_auth_throttle_class()
        throttle.check_request(request)
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            throttle.record_failure(request)
            raise

    def authenticate_credentials(self, key: str):
        token = find_token(ApiToken.hash_key(key))
        now = timezone.now()
        if token is None or not token.is_valid(now):
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        record_use(token, now)
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
