"""What the entity selectors share: the one lookup that answers NotFound."""

from __future__ import annotations

from django.db.models import QuerySet

from fedgov.errors import NotFound


def get_visible(queryset: QuerySet, *, what: str, **lookup):
    """The one row of `queryset` (already scoped to the user) matching `lookup`, or NotFound:
    whoever may not see it learns nothing of its existence."""
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise NotFound(f"{what} not found.")
    return obj


def date_range(entries: QuerySet, *, date_from=None, date_to=None, field: str = "created_at") -> QuerySet:
    """`entries` (ledger entries or governance events) narrowed to an inclusive UTC date range."""
    from datetime import UTC, datetime, time, timedelta

    if date_from:
        entries = entries.filter(**{f"{field}__gte": datetime.combine(date_from, time.min, tzinfo=UTC)})
    if date_to:
        entries = entries.filter(**{f"{field}__lt": datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=UTC)})
    return entries
