"""Delivering the outbox (emails and webhook calls), after commit, in Celery (`tasks.py`):
one row at a time, claimed once by a conditional UPDATE with a lease, sent outside any
transaction, marked delivered right after the send returns. At least once, with a repeat
recognisable by its Message-ID / X-Fedgov-Delivery (see `notifications.services`).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from fedgov.errors import ValidationFailed

from . import signing
from .models import Delivery, DeliveryAttempt
from .services import check_webhook_url

logger = logging.getLogger(__name__)
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
