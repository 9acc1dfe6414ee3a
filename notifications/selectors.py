"""Reads for notifications (ARCHITECTURE.md, Conventions 1)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet

from federation.models import ADMINISTRATORS_GROUP, Membership

from .models import Delivery, Kind, Notification, NotificationPreference, Webhook


def notifications_for(user, *, unread: bool | None = None) -> QuerySet[Notification]:
    """`user`'s own inbox, newest first. Nobody reads anyone else's."""
    qs = Notification.objects.filter(recipient_id=user.pk).order_by("-created_at", "-id")
    if unread is True:
        qs = qs.filter(read_at__isnull=True)
    elif unread is False:
        qs = qs.filter(read_at__isnull=False)
    return qs


def unread_count(user) -> int:
    if not getattr(user, "is_authenticated", False):
        return 0
    return Notification.objects.filter(recipient_id=user.pk, read_at__isnull=True).count()


def preferences_for(user) -> list[dict]:
    """One entry per kind, in Kind's order; a kind without a row has both channels on."""
    rows = {p.kind: p for p in NotificationPreference.objects.filter(user_id=user.pk)}
    out = []
    for kind in Kind:
        row = rows.get(kind.value)
        out.append({
            "kind": kind.value,
            "label": kind.label,
            "in_app": row.in_app if row else True,
            "email": row.email if row else True,
        })
    return out


def administrators() -> QuerySet:
    return (
        get_user_model()
        .objects.filter(Q(is_superuser=True) | Q(groups__name=ADMINISTRATORS_GROUP), is_active=True)
        .distinct()
    )


def representatives_of(organisation_ids) -> list[tuple[int, int]]:
    """(user id, organisation id) of every active representative of those organisations."""
    return list(
        Membership.objects.filter(
            organisation_id__in=list(organisation_ids), role=Membership.Role.REPRESENTATIVE, user__is_active=True
        ).values_list("user_id", "organisation_id")
    )


def webhooks_of(organisation) -> QuerySet[Webhook]:
    return Webhook.objects.filter(organisation=organisation).order_by("-created_at", "-id")


def webhook_deliveries(webhook) -> QuerySet[Delivery]:
    return Delivery.objects.filter(webhook=webhook).prefetch_related("log").order_by("-created_at", "-id")
