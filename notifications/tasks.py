"""Thin Celery tasks for notifications (ARCHITECTURE.md, Conventions 5): ids in, one
service call, idempotent (the claim-once UPDATE in delivery.delivery_claim decides who
sends), acknowledged late and re-queued if the worker dies."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

logger = logging.getLogger(__name__)

COMMON = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 10,
}


@shared_task(name="fedgov.notifications.deliver", queue="fedgov.default", **COMMON)
def deliver_task(delivery_id: int) -> str:
    from .delivery import delivery_send

    outcome = delivery_send(delivery_id=delivery_id)
    logger.info("delivery %s: %s", delivery_id, outcome)
    if outcome.startswith("retry:"):
        # The row says when it is due; this countdown is the fast path, the sweep the net.
        deliver_task.apply_async((delivery_id,), countdown=float(outcome.split(":", 1)[1]))
    return outcome


@shared_task(name="fedgov.notifications.sweep", queue="fedgov.default", **COMMON)
def deliveries_sweep() -> int:
    """Beat: hand out again the deliveries whose task was lost (a worker SIGKILLed with the
    message, Redis restarted) or whose worker died mid-send (its lease ran out)."""
    from .delivery import deliveries_due

    due = deliveries_due()
    for pk in due:
        deliver_task.delay(pk)
    return len(due)


@shared_task(name="fedgov.notifications.verify_ledgers", queue="fedgov.default", **COMMON)
def ledgers_verify_task() -> int:
    """Beat: verify every budget ledger; a failing one notifies (once per distinct failure)."""
    from .rules import ledger_verification_check

    return len(ledger_verification_check())
