"""Writes for notifications: who is told what when a governance event is recorded, the
outbox of emails and webhook calls, and their delivery.

The fan-out runs inside the event's transaction (`notify_for_event`, called by
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
import json
import logging
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlparse

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from federation.access import (
    is_administrator,
    is_representative_of,
    visible_organisations,
)
from federation.i18n import in_english
from federation.models import (
    AgreementSignature,
    GovernanceEvent,
    Organisation,
    RoundApproval,
    TrainingRound,
)
from fedgov.errors import NotFound, PermissionDenied, ValidationFailed

from . import selectors, signing
from .models import Delivery, DeliveryAttempt, Kind, Notification, NotificationPreference, Webhook

logger = logging.getLogger(__name__)
EK = GovernanceEvent.Kind

MSG_WEBHOOK_FORBIDDEN = "Only an administrator or a representative of {organisation} manages its webhooks."
MSG_WEBHOOK_SCHEME = "A webhook URL must be http or https (https in production)."
MSG_WEBHOOK_PRIVATE = "A webhook URL must not point at a private, loopback or link-local address ({address})."
MSG_WEBHOOK_HOST = "The webhook's host {host!r} does not resolve."
MSG_UNKNOWN_KIND = "Unknown notification kind {kind!r}; one of: {choices}."


# --- What an event tells whom ---------------------------------------------------------------


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
    blocked): what has not been sent or seen yet is not sent (see `_withdraw`)."""

    kind: str
    subject_key: str
    organisations: set[int] | None = None  # None: everybody's
    reason: str = ""


def _admin_ids() -> set[int]:
    return set(selectors.administrators().values_list("id", flat=True))


def _round_link(round) -> str:
    return reverse("web:round_detail", args=[round.pk])


def _agreement_link(agreement) -> str:
    return reverse("web:agreement_detail", args=[agreement.pk])


def _round_orgs(round) -> set[int]:
    return set(round.participating_datasets().values_list("organisation_id", flat=True))


def _party_orgs(agreement) -> set[int]:
    return set(agreement.party_links.values_list("organisation_id", flat=True))


def _round_data(round) -> dict:
    return {"round": round.pk, "round_number": round.number, "plan": round.plan_id, "agreement": round.plan.agreement_id}


def _approval_key(round) -> str:
    return f"round:{round.pk}:approval"


def _signature_key(agreement) -> str:
    return f"agreement:{agreement.pk}:v{agreement.version}:signature"


def approval_waiting(event) -> tuple[list[Notice], list[Withdrawal]]:
    """A round was requested: the representatives of each organisation whose approval it
    needs. A request that failed a governance check waits for nobody (the ROUND_BLOCKED
    event that follows says so); an organisation a standing approval covers is withdrawn by
    the ROUND_APPROVED event recorded for it in the same transaction."""
    round = event.round
    if round is None or (round.governance_report or {}).get("passed") is False:
        return [], []
    from federation.governance import required_approvers

    orgs, needed = required_approvers(round)
    orgs -= set(RoundApproval.objects.filter(round=round).values_list("organisation_id", flat=True))
    if not orgs:
        return [], []
    plan = round.plan
    return [Notice(
        kind=Kind.APPROVAL_WAITING,
        subject_key=_approval_key(round),
        title=f"Round {round.number} of '{plan.name}' waits for your approval",
        body=(f"Round {round.number} of plan '{plan.name}' under '{plan.agreement.title}' was requested and passed the "
              f"governance checks. It needs {needed} organisation(s) to approve; yours is one of them."),
        link=_round_link(round),
        organisations=orgs,
        data=_round_data(round),
    )], []


def approval_given(event) -> tuple[list[Notice], list[Withdrawal]]:
    if event.round is None or event.organisation_id is None:
        return [], []
    return [], [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(event.round), {event.organisation_id}, "approved")]


def round_outcome(kind: str):
    def rule(event) -> tuple[list[Notice], list[Withdrawal]]:
        round = event.round
        if round is None:
            return [], []
        users = {round.requested_by_id} if round.requested_by_id else set()
        if kind in (Kind.ROUND_FAILED, Kind.ROUND_ABORTED):
            users |= _admin_ids()
        notice = Notice(
            kind=kind,
            subject_key=f"round:{round.pk}:{kind}",
            title=f"Round {round.number} of '{round.plan.name}': {in_english(Kind(kind).label).split()[-1].lower()}",
            body=event.message,
            link=_round_link(round),
            organisations=_round_orgs(round),
            users=users,
            data=_round_data(round),
        )
        notices = [notice, *budget_notices(round)]
        withdrawals = [] if kind == Kind.ROUND_COMPLETED else [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(round), None, kind)]
        return notices, withdrawals

    return rule


def round_rejected(event) -> tuple[list[Notice], list[Withdrawal]]:
    if event.round is None:
        return [], []
    return [], [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(event.round), None, "rejected")]


def round_started(event) -> tuple[list[Notice], list[Withdrawal]]:
    """The budget was reserved: a dataset may have crossed 80% or be unable to pay for the
    next round. Nobody's approval is awaited any more (a quorum may have been reached)."""
    if event.round is None:
        return [], []
    return budget_notices(event.round), [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(event.round), None, "started")]


BUDGET_WARNING_FRACTION = 0.8


def budget_notices(round: TrainingRound) -> list[Notice]:
    """Budget at 80% and budget exhausted, for each dataset of `round`, told once per dataset
    and budget (a raised budget can warn again). Exhausted: another round of this plan would
    no longer fit, by the ledger's own composition (ARCHITECTURE.md, Ledger 1; open
    reservations count as spent)."""
    from accounting import accountant as acc
    from accounting.ledger import project
    from accounting.models import DatasetBudget
    from accounting.services.budget import effective_budget, round_dp_event

    datasets = list(round.participating_datasets().select_related("organisation"))
    rows = {b.dataset_id: b for b in DatasetBudget.objects.filter(dataset_id__in=[d.pk for d in datasets])}
    admins = None
    out = []
    for dataset in datasets:
        row = rows.get(dataset.pk)
        if row is None or row.entry_count == 0:
            continue
        limit, spent = effective_budget(row, dataset), row.epsilon_spent
        key, event = round_dp_event(round=round, dataset=dataset)
        after_next = project(row, dataset, add=(f"{key}:next", acc.rdp_vector(event))).epsilon_spent
        exhausted = after_next > limit + 1e-12
        if not exhausted and spent < BUDGET_WARNING_FRACTION * limit:
            continue
        admins = _admin_ids() if admins is None else admins
        common = dict(
            subject_key=f"dataset:{dataset.pk}:budget:{limit!r}",
            link=reverse("web:dataset_detail", args=[dataset.slug]),
            organisations={dataset.organisation_id},
            users=admins,
            data={"dataset": dataset.slug, "epsilon_spent": spent, "epsilon_budget": limit},
        )
        if exhausted:
            out.append(Notice(
                kind=Kind.BUDGET_EXHAUSTED,
                title=f"Budget of {dataset.name} exhausted",
                body=(f"Dataset {dataset.slug} has spent {spent:.3g} of its epsilon budget {limit:.3g}; another round of "
                      f"'{round.plan.name}' would bring it to {after_next:.3g}, so none runs unless the budget is raised."),
                **common,
            ))
        else:
            out.append(Notice(
                kind=Kind.BUDGET_80,
                title=f"Budget of {dataset.name} is {100 * spent / limit:.0f}% spent",
                body=f"Dataset {dataset.slug} has spent {spent:.3g} of its epsilon budget {limit:.3g}.",
                **common,
            ))
    return out


def signature_requested(event) -> tuple[list[Notice], list[Withdrawal]]:
    agreement = event.agreement
    if agreement is None:
        return [], []
    signed = set(AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).values_list("organisation_id", flat=True))
    orgs = _party_orgs(agreement) - signed
    if not orgs:
        return [], []
    return [Notice(
        kind=Kind.SIGNATURE_REQUESTED,
        subject_key=_signature_key(agreement),
        title=f"'{agreement.title}' (version {agreement.version}) waits for your signature",
        body=event.message,
        link=_agreement_link(agreement),
        organisations=orgs,
        data={"agreement": agreement.pk, "version": agreement.version, "terms_hash": agreement.terms_hash},
    )], []


def signature_given(event) -> tuple[list[Notice], list[Withdrawal]]:
    if event.agreement is None or event.organisation_id is None:
        return [], []
    return [], [Withdrawal(Kind.SIGNATURE_REQUESTED, _signature_key(event.agreement), {event.organisation_id}, "signed")]


def exit_rule(kind: str):
    def rule(event) -> tuple[list[Notice], list[Withdrawal]]:
        agreement = event.agreement
        if agreement is None:
            return [], []
        who = event.organisation.name if event.organisation_id else "A party"
        return [Notice(
            kind=kind,
            subject_key=f"agreement:{agreement.pk}:party:{event.organisation_id}:{kind}",
            title=(f"{who} gave exit notice from '{agreement.title}'" if kind == Kind.EXIT_NOTICE
                   else f"{who} has left '{agreement.title}'"),
            body=event.message,
            link=_agreement_link(agreement),
            organisations=_party_orgs(agreement),
            users=_admin_ids(),
            data={"agreement": agreement.pk, "organisation": event.organisation_id, **(event.details or {})},
        )], []

    return rule


def plan_paused(event) -> tuple[list[Notice], list[Withdrawal]]:
    agreement = event.agreement
    if agreement is None:
        return [], []
    plan_id = (event.details or {}).get("plan")
    return [Notice(
        kind=Kind.PLAN_PAUSED,
        subject_key=f"event:{event.pk}",
        title=f"A training plan under '{agreement.title}' was {'paused' if event.kind == 'plan_paused' else 'stopped'}",
        body=event.message,
        link=reverse("web:plan_detail", args=[plan_id]) if isinstance(plan_id, int) else _agreement_link(agreement),
        organisations=_party_orgs(agreement),
        users=_admin_ids(),
        data={"agreement": agreement.pk, **({"plan": plan_id} if plan_id else {})},
    )], []


# The mapping table: governance event kind -> rule. Extend it here; a kind with no entry
# notifies nobody. "plan_paused" is named by its value: the kind exists once the plan-pause
# work lands, and this entry then applies without a change here.
RULES = {
    EK.AGREEMENT_SUBMITTED: signature_requested,
    EK.AGREEMENT_AMENDED: signature_requested,
    EK.AGREEMENT_SIGNED: signature_given,
    EK.ROUND_REQUESTED: approval_waiting,
    EK.ROUND_APPROVED: approval_given,
    EK.ROUND_REJECTED: round_rejected,
    EK.ROUND_STARTED: round_started,
    EK.ROUND_BLOCKED: round_outcome(Kind.ROUND_BLOCKED),
    EK.ROUND_ABORTED: round_outcome(Kind.ROUND_ABORTED),
    EK.ROUND_FAILED: round_outcome(Kind.ROUND_FAILED),
    EK.ROUND_COMPLETED: round_outcome(Kind.ROUND_COMPLETED),
    EK.PLAN_STOPPED: plan_paused,
    "plan_paused": plan_paused,
    EK.EXIT_NOTICE: exit_rule(Kind.EXIT_NOTICE),
    EK.PARTY_EXITED: exit_rule(Kind.EXIT_EFFECTIVE),
}


def notify_for_event(event: GovernanceEvent) -> list[Notification]:
    """Write the inbox and outbox rows `event` causes, in the caller's transaction."""
    rule = RULES.get(event.kind)
    if rule is None:
        return []
    notices, withdrawals = rule(event)
    for withdrawal in withdrawals:
        _withdraw(withdrawal)
    created: list[Notification] = []
    for notice in notices:
        created += notify(notice, event=event)
    return created


# --- Writing the rows ------------------------------------------------------------------------


def _key(*parts) -> str:
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
            key = _key("email", user.pk, notice.kind, notice.subject_key)
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
            key = _key("webhook", webhook.pk, notice.kind, notice.subject_key)
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


def _withdraw(w: Withdrawal) -> None:
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


# --- Delivery ----------------------------------------------------------------------------------


def backoff_seconds(attempts: int) -> float:
    """Exponential: base, 2 base, 4 base, ... capped."""
    return min(settings.FEDGOV_NOTIFY_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0), settings.FEDGOV_NOTIFY_BACKOFF_MAX_SECONDS)


def delivery_claim(*, delivery_id: int) -> tuple[Delivery, DeliveryAttempt] | None:
    """Claim-once (ARCHITECTURE.md, Conventions 7): a conditional UPDATE moves the row to
    `sending` with a fresh token and lease; of two tasks for one row (a duplicate message, the
    sweep's copy) exactly one sees a row count of 1. A row still `sending` after its lease
    ran out was claimed by a worker that died; it is claimed again, and the log says the
    previous try's outcome is unknown."""
    now = timezone.now()
    token = secrets.token_hex(16)
    due = Q(status=Delivery.Status.PENDING, next_attempt_at__lte=now) | Q(status=Delivery.Status.SENDING, lease_expires_at__lt=now)
    with transaction.atomic():
        claimed = Delivery.objects.filter(due, pk=delivery_id).update(
            status=Delivery.Status.SENDING,
            claim_token=token,
            lease_expires_at=now + timedelta(seconds=settings.FEDGOV_NOTIFY_LEASE_SECONDS),
            attempts=F("attempts") + 1,
        )
        if claimed != 1:
            return None
        delivery = Delivery.objects.select_related("webhook").get(pk=delivery_id)
        DeliveryAttempt.objects.filter(delivery=delivery, finished_at__isnull=True).update(
            finished_at=now, error="the worker stopped before recording an outcome (lease expired); sent again with the same id"
        )
        attempt = DeliveryAttempt.objects.create(delivery=delivery, number=delivery.attempts, started_at=now)
    return delivery, attempt


@dataclass
class SendResult:
    ok: bool
    status_code: int | None = None
    error: str = ""


def message_id(delivery: Delivery) -> str:
    return f"<{delivery.idempotency_key}@{settings.FEDGOV_EMAIL_MESSAGE_ID_DOMAIN}>"


def _send_email(delivery: Delivery) -> SendResult:
    import smtplib

    from django.core.mail import EmailMessage, get_connection

    message = EmailMessage(
        subject=delivery.payload.get("subject", ""),
        body=delivery.payload.get("body", ""),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.target],
        headers={"Message-ID": message_id(delivery), "X-Fedgov-Delivery": delivery.idempotency_key,
                 "X-Fedgov-Event": delivery.kind},
        connection=get_connection(fail_silently=False),
    )
    try:
        message.send()
    except smtplib.SMTPResponseException as exc:
        return SendResult(False, exc.smtp_code, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
    except (smtplib.SMTPException, OSError) as exc:
        return SendResult(False, None, f"{type(exc).__name__}: {exc}")
    return SendResult(True, 250)


def _send_webhook(delivery: Delivery) -> SendResult:
    import requests

    webhook = delivery.webhook
    if webhook is None or not webhook.active:
        return SendResult(False, None, "webhook removed or deactivated")
    try:
        check_webhook_url(delivery.target)
    except ValidationFailed as exc:
        return SendResult(False, None, exc.message)
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    headers = signing.headers(secret=webhook.secret, body=body, delivery_id=delivery.idempotency_key, kind=delivery.kind)
    try:
        response = requests.post(
            delivery.target, data=body, headers=headers, allow_redirects=False,
            timeout=(settings.FEDGOV_WEBHOOK_CONNECT_TIMEOUT, settings.FEDGOV_WEBHOOK_TIMEOUT),
        )
    except requests.RequestException as exc:
        return SendResult(False, None, f"{type(exc).__name__}: {exc}")
    if 200 <= response.status_code < 300:
        return SendResult(True, response.status_code)
    return SendResult(False, response.status_code, f"HTTP {response.status_code}: {response.text[:300]}")


def delivery_send(*, delivery_id: int) -> str:
    """Claim, send (outside any transaction), record. Returns what happened:
    'skipped' (not due, or another task has it), 'delivered', 'retry:<seconds>', 'failed'."""
    claim = delivery_claim(delivery_id=delivery_id)
    if claim is None:
        return "skipped"
    delivery, attempt = claim
    sender = _send_email if delivery.channel == Delivery.Channel.EMAIL else _send_webhook
    try:
        result = sender(delivery)
    except Exception as exc:  # noqa: BLE001 -- a bug in a sender must not leave the row leased
        logger.exception("delivery %s: sender raised", delivery.pk)
        result = SendResult(False, None, f"{type(exc).__name__}: {exc}")
    return _record(delivery, attempt, result)


def _record(delivery: Delivery, attempt: DeliveryAttempt, result: SendResult) -> str:
    now = timezone.now()
    mine = Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.SENDING, claim_token=delivery.claim_token)
    with transaction.atomic():
        DeliveryAttempt.objects.filter(pk=attempt.pk).update(
            finished_at=now, ok=result.ok, status_code=result.status_code, error=result.error[:2000]
        )
        if result.ok:
            mine.update(status=Delivery.Status.DELIVERED, delivered_at=now, lease_expires_at=None, last_error="")
            return "delivered"
        if delivery.attempts >= settings.FEDGOV_NOTIFY_MAX_ATTEMPTS:
            mine.update(status=Delivery.Status.FAILED, lease_expires_at=None, last_error=result.error[:2000])
            logger.warning("delivery %s: failed after %s attempts: %s", delivery.pk, delivery.attempts, result.error)
            return "failed"
        wait = backoff_seconds(delivery.attempts)
        mine.update(
            status=Delivery.Status.PENDING, lease_expires_at=None, last_error=result.error[:2000],
            next_attempt_at=now + timedelta(seconds=wait),
        )
    return f"retry:{wait:g}"


def deliveries_due(*, now=None, limit: int = 500) -> list[int]:
    """What the sweep hands out again: pending rows due a while ago (their task was lost,
    e.g. Redis restarted or a worker died holding it) and `sending` rows whose lease ran out."""
    now = now or timezone.now()
    grace = now - timedelta(seconds=settings.FEDGOV_NOTIFY_SWEEP_GRACE_SECONDS)
    return list(
        Delivery.objects.filter(
            Q(status=Delivery.Status.PENDING, next_attempt_at__lte=grace)
            | Q(status=Delivery.Status.SENDING, lease_expires_at__lt=now)
        ).order_by("next_attempt_at").values_list("id", flat=True)[:limit]
    )


# --- Ledger verification -----------------------------------------------------------------------


def ledger_verification_check() -> list[Notification]:
    """Verify every ledger (accounting.audit.verify_all) and tell the administrators and the
    dataset's representatives about each chain that fails, once per distinct failure."""
    from accounting.audit import verify_all
    from federation.models import Dataset

    out: list[Notification] = []
    failing = [r for r in verify_all() if not r.ok]
    if not failing:
        return out
    datasets = {d.slug: d for d in Dataset.objects.filter(slug__in=[r.dataset for r in failing])}
    admins = _admin_ids()
    for result in failing:
        dataset = datasets.get(result.dataset)
        error = str(result.error)
        notice = Notice(
            kind=Kind.LEDGER_VERIFICATION_FAILED,
            subject_key=f"ledger:{result.dataset}:{_key(error)[:16]}",
            title=f"The budget ledger of {result.dataset} fails verification",
            body=f"Verifying the ledger of {result.dataset} failed: {error}",
            link=reverse("web:ledger", args=[dataset.slug]) if dataset else "",
            organisations={dataset.organisation_id} if dataset else set(),
            users=admins,
            data={"dataset": result.dataset, "bad_seq": result.bad_seq, "error": error},
        )
        out += notify(notice)
    return out
