"""API tokens: a user's own; an administrator's, everyone's."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils.translation import gettext_noop

from fedgov.errors import NotFound

from .. import access
from ..models import ApiToken


def tokens_for(*, user) -> QuerySet[ApiToken]:
    """The API's tokens: administrators everyone's, anyone else their own."""
    tokens = ApiToken.objects.select_related("user")
    if access.is_administrator(user):
        return tokens
    if not user or not user.is_authenticated:
        return tokens.none()
    return tokens.filter(user=user)


def own_tokens(*, user) -> QuerySet[ApiToken]:
    """The account page's tokens: the user's own, newest first."""
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def own_token(*, user, pk: int) -> ApiToken:
    token = ApiToken.objects.filter(pk=pk, user=user).first()
    if token is None:
        raise NotFound(gettext_noop("Token not found."))
    return token


def user_named(*, username: str):
    """The user called `username`, or None (only administrators may ask: the caller checks)."""
    return get_user_model().objects.filter(username=username).first()
