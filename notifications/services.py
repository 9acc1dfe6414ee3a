"""Writes for notifications: the inbox and outbox rows of a notice, the inbox and the
preferences, webhooks. Who is told what is `notifications.rules`; delivering the outbox,
`notifications.delivery`.

The fan-out runs inside the event's transaction (`rules.notify_for_event`, called by
`federation.services.common.event_record`): the inbox rows and the outbox rows commit or
roll back with the event. Delivery happens after commit, in Celery (`tasks.py`), one outbox
row at a time: claimed once by a conditional UPDATE with a lease, sent outside any
transaction, marked delivered right after the send returns.

Exactly once is impossible across a crash between "the receiver accepted it" and "we wrote
that down"; fedgov delivers at least once and makes a repeat recognisable: an email's
Message-ID and a webhook's X-Fedgov-Delivery / Idempotency-Key are derived from the outbox
row, so they are the same on every try. The window is the time between the SMTP server's
final reply (or the HTTP response) and the UPDATE that marks the row, a few milliseconds;
a live worker never loses its lease (the lease is longer than the send timeouts, which
settings check), so only a worker that died inside that window causes a repeat.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlparse

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from federation.access import (
    is_administrator,
    is_representative_of,
    visible_organisations,
)
from federation.models import (
    GovernanceEvent,
    Organisation,
)
from fedgov.errors import NotFound, PermissionDenied, ValidationFailed

from . import selectors
from .models import Delivery, Kind, Notification, NotificationPreference, Webhook

logger = logging.getLogger(__name__)

MSG_WEBHOOK_FORBIDDEN = "Only an administrator or a representative of {organisation} manages its webhooks."
MSG_WEBHOOK_SCHEME = "A webhook URL must be http or https (https in production)."
MSG_WEBHOOK_PRIVATE = "A webhook URL must not point at a private, loopback or link-local address ({address})."
MSG_WEBHOOK_HOST = "The webhook's host {host!r} does not resolve."
MSG_UNKNOWN_KIND = "Unknown notification kind {kind!r}; one of: {choices}."


# --- What to tell (the rules that decide it: notifications/rules.py) -------------------------


@dataclass
class Notice:
    """One fact to tell: to the representatives of `organisations` (and their organisations'
    webhooks) and to the users in `users`."""

    kind: str
    subject_key: str
    title: str
    body: str
    link: str = ""
    organisations: set[int] = field(default_factory=set)
    users: set[int] = field(default_factory=set)
    data: dict = field(default_factory=dict)


@dataclass
class Withdrawal:
    """Something announced earlier no longer waits (an approval was given, a round was
    blocked): what has not been sent or seen yet is not sent (see `withdraw`)."""

    kind: str
    subject_key: str
    organisations: set[int] | None = None  # None: everybody's
    reason: str = ""


# --- Writing the rows ------------------------------------------------------------------------


def key_digest(*parts) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:40]


def public_url(path: str) -> str:
    return settings.FEDGOV_PUBLIC_URL.rstrip("/") + path if path else settings.FEDGOV_PUBLIC_URL


def _choices(user_ids) -> dict[int, NotificationPreference]:
    return {(p.user_id, p.kind): p for p in NotificationPreference.objects.filter(user_id__in=user_ids)}


@transaction.atomic
def notify(notice: Notice, *, event: GovernanceEvent | None = None) -> list[Notification]:
    """Inbox rows for each person who wants them, an email outbox row for each who wants
    mail, a webhook outbox row for each concerned organisation's webhook; each at most once
    per (person or webhook, kind, subject). Deliveries are enqueued after commit."""
    from django.contrib.auth import get_user_model

    reps = selectors.representatives_of(notice.organisations) if notice.organisations else []
    user_ids = {u for u, _ in reps} | set(notice.users)
    users = list(get_user_model().objects.filter(pk__in=user_ids, is_active=True).order_by("pk"))
    prefs = _choices([u.pk for u in users])
    now = timezone.now()
    created, deliveries = [], []
    for user in users:
        pref = prefs.get((user.pk, notice.kind))
        in_app = pref.in_app if pref else True
        email = pref.email if pref else True
        notification = None
        if in_app:
            notification, made = Notification.objects.get_or_create(
                recipient=user, kind=notice.kind, subject_key=notice.subject_key,
                defaults=dict(title=notice.title[:200], body=notice.body, link=notice.link, event=event, created_at=now),
            )
            if made:
                created.append(notification)
        if email and user.email:
            key = key_digest("email", user.pk, notice.kind, notice.subject_key)
            delivery, made = Delivery.objects.get_or_create(
                idempotency_key=key,
                defaults=dict(
                    channel=Delivery.Channel.EMAIL, kind=notice.kind, subject_key=notice.subject_key, notification=notification,
                    recipient=user, event=event, target=user.email,
                    payload={"subject": notice.title[:200], "body": _email_body(notice)},
                ),
            )
            if made:
                deliveries.append(delivery.pk)
    if notice.organisations:
        for webhook in Webhook.objects.filter(organisation_id__in=notice.organisations, active=True).select_related("organisation"):
            if not webhook.wants(notice.kind):
                continue
            key = key_digest("webhook", webhook.pk, notice.kind, notice.subject_key)
            payload = {
                "delivery": key,
                "kind": notice.kind,
                "title": notice.title,
                "body": notice.body,
                "link": public_url(notice.link),
                "organisation": webhook.organisation.slug,
                "event": {"id": event.pk, "kind": event.kind, "created_at": event.created_at.isoformat()} if event else None,
                "data": notice.data,
                "created_at": now.isoformat(),
            }
            delivery, made = Delivery.objects.get_or_create(
                idempotency_key=key,
                defaults=dict(
                    channel=Delivery.Channel.WEBHOOK, kind=notice.kind, subject_key=notice.subject_key, webhook=webhook,
                    event=event, target=webhook.url, payload=payload,
                ),
            )
            if made:
                deliveries.append(delivery.pk)
    if deliveries:
        transaction.on_commit(lambda ids=tuple(deliveries): enqueue(ids))
    return created


def _email_body(notice: Notice) -> str:
    lines = [notice.body, ""]
    if notice.link:
        lines.append(public_url(notice.link))
        lines.append("")
    lines.append("You receive this because of your notification preferences in fedgov; change them at "
                 + public_url(reverse("notifications:preferences")) + ".")
    return "\n".join(lines)


def withdraw(w: Withdrawal) -> None:
    """Cancel the outbox rows of `w` that no worker has touched, and drop its unread inbox
    rows none of whose deliveries went out: nobody is told to act on what no longer waits.
    Within the transaction that created them (a standing approval applied at request time),
    this undoes them before anyone could see them."""
    deliveries = Delivery.objects.select_for_update().filter(
        kind=w.kind, subject_key=w.subject_key, status=Delivery.Status.PENDING, attempts=0
    )
    notifications = Notification.objects.filter(kind=w.kind, subject_key=w.subject_key, read_at__isnull=True)
    if w.organisations is not None:
        user_ids = [u for u, _ in selectors.representatives_of(w.organisations)]
        # A subquery, not a join: PostgreSQL refuses FOR UPDATE on the nullable side of an outer join.
        hooks = Webhook.objects.filter(organisation_id__in=w.organisations).values("id")
        deliveries = deliveries.filter(Q(recipient_id__in=user_ids) | Q(webhook_id__in=hooks))
        notifications = notifications.filter(recipient_id__in=user_ids)
    ids = list(deliveries.values_list("id", flat=True))
    if ids:
        Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING, attempts=0).update(
            status=Delivery.Status.CANCELLED, last_error=f"withdrawn: {w.reason}"
        )
    sent = Delivery.objects.filter(notification_id__in=notifications.values("id")).exclude(status=Delivery.Status.CANCELLED)
    notifications.exclude(id__in=sent.values("notification_id")).delete()


def enqueue(delivery_ids) -> None:
    """Hand the deliveries to Celery. A broker that is down loses nothing: the rows stay
    pending and the beat sweep hands them out again."""
    from .tasks import deliver_task

    for pk in delivery_ids:
        try:
            deliver_task.delay(pk)
        except Exception:  # noqa: BLE001 -- any broker error; the sweep recovers
            logger.warning("delivery %s: could not enqueue; the sweep will retry", pk, exc_info=True)
            return


# --- Inbox and preferences --------------------------------------------------------------------


def notification_mark_read(*, user, notification_id: int) -> Notification:
    notification = selectors.notifications_for(user).filter(pk=notification_id).first()
    if notification is None:
        raise NotFound("Notification not found.")
    if notification.read_at is None:
        Notification.objects.filter(pk=notification.pk, read_at__isnull=True).update(read_at=timezone.now())
        notification.refresh_from_db()
    return notification


def notifications_mark_all_read(*, user) -> int:
    return selectors.notifications_for(user, unread=True).update(read_at=timezone.now())


@transaction.atomic
def preferences_update(*, user, preferences: list[dict]) -> list[dict]:
    """Set `user`'s channels for the kinds named; the others stay as they are."""
    valid = {k.value for k in Kind}
    for item in preferences:
        if item.get("kind") not in valid:
            message = MSG_UNKNOWN_KIND.format(kind=item.get("kind"), choices=", ".join(sorted(valid)))
            raise ValidationFailed(message, fields={"preferences": [message]})
    for item in preferences:
        pref, _ = NotificationPreference.objects.get_or_create(user=user, kind=item["kind"])
        for channel in ("in_app", "email"):
            if channel in item:
                setattr(pref, channel, bool(item[channel]))
        pref.full_clean()
        pref.save()
    return selectors.preferences_for(user)


# --- Webhooks ----------------------------------------------------------------------------------


def require_webhook_manager(user, organisation: Organisation) -> None:
    """Administrators and the organisation's representatives manage its webhooks. Whoever
    cannot see the organisation gets 404; whoever sees it but is neither gets 403
    (ARCHITECTURE.md, Conventions 8)."""
    if is_administrator(user) or is_representative_of(user, organisation):
        return
    if not visible_organisations(user).filter(pk=organisation.pk).exists():
        raise NotFound("Organisation not found.")
    raise PermissionDenied(MSG_WEBHOOK_FORBIDDEN.format(organisation=organisation.name))


def check_webhook_url(url: str) -> None:
    """http(s) only (https in production); no private, loopback or link-local target unless
    FEDGOV_WEBHOOK_ALLOW_PRIVATE (development and tests): an organisation's webhook must not
    turn the coordinator into a way to reach its own network. Checked when the webhook is
    saved and again before each call (a name may resolve elsewhere later)."""
    parsed = urlparse(url)
    schemes = ("https",) if settings.PRODUCTION else ("http", "https")
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ValidationFailed(MSG_WEBHOOK_SCHEME, fields={"url": [MSG_WEBHOOK_SCHEME]})
    if settings.FEDGOV_WEBHOOK_ALLOW_PRIVATE:
        return
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OSError:
        message = MSG_WEBHOOK_HOST.format(host=parsed.hostname)
        raise ValidationFailed(message, fields={"url": [message]}) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            message = MSG_WEBHOOK_PRIVATE.format(address=address)
            raise ValidationFailed(message, fields={"url": [message]})


@transaction.atomic
def webhook_create(*, actor, organisation: Organisation, url: str, kinds: list[str] | None = None) -> Webhook:
    require_webhook_manager(actor, organisation)
    check_webhook_url(url)
    kinds = list(kinds or [])
    valid = {k.value for k in Kind}
    unknown = [k for k in kinds if k not in valid]
    if unknown:
        message = MSG_UNKNOWN_KIND.format(kind=unknown[0], choices=", ".join(sorted(valid)))
        raise ValidationFailed(message, fields={"kinds": [message]})
    webhook = Webhook(organisation=organisation, url=url, secret=secrets.token_hex(32), kinds=kinds, created_by=actor)
    from federation.services.common import validated

    validated(webhook)
    webhook.save()
    return webhook


@transaction.atomic
def webhook_deactivate(*, actor, webhook: Webhook) -> Webhook:
    require_webhook_manager(actor, webhook.organisation)
    webhook = Webhook.objects.select_for_update().get(pk=webhook.pk)
    if webhook.active:
        webhook.active = False
        webhook.save(update_fields=["active"])
        Delivery.objects.filter(webhook=webhook, status=Delivery.Status.PENDING).update(
            status=Delivery.Status.CANCELLED, last_error="webhook deactivated"
        )
    return webhook
