"""The governance history: the events a user reads (`access.visible_events`)."""

from __future__ import annotations

from django.db.models import QuerySet

from .. import access
from ..models import GovernanceEvent


def events_for(*, user, agreement=None, kind: str | None = None) -> QuerySet[GovernanceEvent]:
    """The web UI's history: the events `user` reads, with what each row shows joined in."""
    qs = access.visible_events(user)
    if agreement is not None:
        qs = qs.filter(agreement=agreement)
    if kind:
        qs = qs.filter(kind=kind)
    return qs.select_related("agreement", "organisation", "round__plan")


def event_feed_for(*, user) -> QuerySet[GovernanceEvent]:
    """The API's history: the events `user` reads, newest first."""
    return access.visible_events(user).order_by("-created_at", "-id")


def history_agreements(*, user):
    """The agreements whose history `user` reads (the history page's agreement filter)."""
    return access.history_agreements(user)
