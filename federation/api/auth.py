"""Token authentication with hashed keys, scopes and expiry (`Authorization: Token <key>`)."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from ..models import ApiToken


class ScopedTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"

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


class HasScope(permissions.BasePermission):
    """View attribute `required_scope`: a token must carry it; a session user passes."""

    message = "This token lacks the scope this operation needs."

    def has_permission(self, request, view) -> bool:
        scopes = token_scopes(request)
        needed = getattr(view, "required_scope", None)
        if scopes is None or needed is None:
            return True
        if needed not in scopes:
            self.message = f"This token lacks the '{needed}' scope."
            return False
        return True
