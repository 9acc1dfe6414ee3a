"""API tokens: created with scopes and an expiry, stored hashed, revocable."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from fedgov.errors import PermissionDenied, ValidationFailed

from ..access import is_administrator
from ..models import ApiToken, Membership

MSG_UNKNOWN_SCOPE = "Unknown scope {scope!r}; choose from {choices}."
MSG_AGENT_SCOPE = "The agent scope is only for a partner agent's user (a member with the agent role)."


def parse_scopes(raw) -> list[str]:
    if isinstance(raw, str):
        raw = [s for s in (p.strip() for p in raw.split(",")) if s]
    scopes = list(dict.fromkeys(raw or []))
    if not scopes:
        raise ValidationFailed("Give at least one scope.", fields={"scopes": ["Give at least one scope."]})
    for scope in scopes:
        if scope not in ApiToken.Scope.values:
            message = MSG_UNKNOWN_SCOPE.format(scope=scope, choices=", ".join(ApiToken.Scope.values))
            raise ValidationFailed(message, fields={"scopes": [message]})
    return scopes


@transaction.atomic
def token_issue(*, actor, user, scopes, name: str = "", expires_in_days: int | None = 90) -> tuple[ApiToken, str]:
    """Create a token for `user` and return it with its key (shown once, never stored)."""
    if actor is not None and actor != user and not is_administrator(actor):
        raise PermissionDenied("Only an administrator can create tokens for someone else.")
    scopes = parse_scopes(scopes)
    if ApiToken.Scope.AGENT in scopes and not Membership.objects.filter(user=user, role=Membership.Role.AGENT).exists():
        raise ValidationFailed(MSG_AGENT_SCOPE, fields={"scopes": [MSG_AGENT_SCOPE]})
    if expires_in_days is not None and expires_in_days < 1:
        raise ValidationFailed("A token must live at least one day.", fields={"expires_in_days": ["At least 1."]})
    key = "fg_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[:10],
        key_hash=ApiToken.hash_key(key),
        scopes=scopes,
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    return token, key


@transaction.atomic
def token_revoke(*, actor, token: ApiToken) -> ApiToken:
    if actor != token.user and not is_administrator(actor):
        raise PermissionDenied("You can only revoke your own tokens.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
