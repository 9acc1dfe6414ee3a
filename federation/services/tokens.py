"""API tokens: created with scopes and an expiry, stored hashed, revocable."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from fedgov.errors import PermissionDenied, ValidationFailed

from ..access import is_administrator
from ..models import ApiToken, Membership
from ..token_cache import forget_tokens

MSG_UNKNOWN_SCOPE = "Unknown scope {scope!r}; choose from {choices}."
MSG_AGENT_SCOPE = "The agent scope is only for a partner agent's user (a member with the agent role)."
MSG_SCOPE_ESCALATION = "A token can only create tokens with scopes it carries itself ({scopes})."
MSG_MINT_SCOPE = "Creating a token through a token needs the 'approve' scope; sign in, or use a token that has it."
MSG_MINT_OTHER_USER = "A token can only create tokens for its own user; an administrator signs in to create one for someone else."
MSG_PARENT_INVALID = "This token is revoked or expired; it cannot create tokens."


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


class TokenScopeEscalation(PermissionDenied):
    """A token asked for a token with a scope it does not carry itself."""

    code = "token_scope_escalation"


class TokenMintingRefused(PermissionDenied):
    """A token may not mint this token: it lacks the `approve` scope, it is no longer valid,
    or the new token would be someone else's (only an administrator's session can do that)."""

    code = "token_minting_refused"


@transaction.atomic
def token_issue(
    *, actor, user, scopes, name: str = "", expires_in_days: int | None = 90, parent: ApiToken | None = None
) -> tuple[ApiToken, str]:
    """Create a token for `user` and return it with its key (shown once, never stored).

    `parent`: the token the request that asks for this one authenticated with. The new token
    then never has more than its parent: a scope the parent lacks is refused, its expiry is the
    earlier of the one asked for and the parent's, it is the parent's own user's, and revoking
    the parent revokes it. Minting through a token needs the `approve` scope.
    """
    if actor is not None and actor != user and not is_administrator(actor):
        raise PermissionDenied("Only an administrator can create tokens for someone else.")
    scopes = parse_scopes(scopes)
    if ApiToken.Scope.AGENT in scopes and not Membership.objects.filter(user=user, role=Membership.Role.AGENT).exists():
        raise ValidationFailed(MSG_AGENT_SCOPE, fields={"scopes": [MSG_AGENT_SCOPE]})
    if expires_in_days is not None and expires_in_days < 1:
        raise ValidationFailed("A token must live at least one day.", fields={"expires_in_days": ["At least 1."]})
    now = timezone.now()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
    if parent is not None:
        expires_at = _check_parent(parent=parent, user=user, scopes=scopes, expires_at=expires_at, now=now)
    key = "fg_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[:10],
        key_hash=ApiToken.hash_key(key),
        scopes=scopes,
        created_at=now,
        expires_at=expires_at,
        parent=parent,
    )
    return token, key


def _check_parent(*, parent: ApiToken, user, scopes: list[str], expires_at, now):
    """The new token's expiry under `parent`, or the reason `parent` cannot mint it."""
    # Locked: a revocation of the parent (which locks it too) either sees this child or
    # happens first and is seen here, so no child of a revoked token is ever left valid.
    parent = ApiToken.objects.select_for_update().get(pk=parent.pk)
    if not parent.is_valid(now):
        raise TokenMintingRefused(MSG_PARENT_INVALID)
    if ApiToken.Scope.APPROVE not in parent.scopes:
        raise TokenMintingRefused(MSG_MINT_SCOPE)
    if parent.user_id != user.pk:
        raise TokenMintingRefused(MSG_MINT_OTHER_USER)
    wider = [s for s in scopes if s not in parent.scopes]
    if wider:
        raise TokenScopeEscalation(
            MSG_SCOPE_ESCALATION.format(scopes=", ".join(sorted(parent.scopes))), requested=wider, allowed=sorted(parent.scopes)
        )
    if parent.expires_at is not None and (expires_at is None or expires_at > parent.expires_at):
        return parent.expires_at
    return expires_at


@transaction.atomic
def token_revoke(*, actor, token: ApiToken) -> ApiToken:
    """Revoke `token` and every token minted from it, and from those, at once."""
    if actor != token.user and not is_administrator(actor):
        raise PermissionDenied("You can only revoke your own tokens.")
    now = timezone.now()
    level = [token.pk]
    while level:
        # Each generation locked before it is revoked: see _check_parent.
        rows = list(ApiToken.objects.select_for_update().filter(pk__in=level).values_list("pk", "key_hash"))
        ids = [pk for pk, _ in rows]
        ApiToken.objects.filter(pk__in=ids, revoked_at__isnull=True).update(revoked_at=now)
        forget_tokens(key_hash for _, key_hash in rows)  # a bulk update sends no signal
        level = list(ApiToken.objects.filter(parent_id__in=ids).values_list("pk", flat=True))
    token.refresh_from_db(fields=["revoked_at"])
    return token
