"""Thin Celery tasks (STYLE.md 5): they take ids, call one service, and are idempotent.

Every task is acknowledged late and re-queued if its worker dies; a repeated delivery finds
the row already past the state it expects and returns without doing anything twice.
"""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)

COMMON = {"acks_late": True, "reject_on_worker_lost": True, "max_retries": 5, "default_retry_delay": 2}


@shared_task(name="fedgov.rounds.start", queue="fedgov.rounds", bind=True, **COMMON)
def round_start_task(self, round_id: int) -> str:
    from .services.rounds import round_start

    try:
        round = round_start(round_id=round_id)
    except Exception as exc:  # database hiccups: retry; the service is idempotent
        logger.exception("round %s: start failed, retrying", round_id)
        raise self.retry(exc=exc) from exc
    if round is None:
        logger.info("round %s: not approved any more or gone; nothing to start", round_id)
        return "skipped"
    return round.status


@shared_task(name="fedgov.deadlines.sweep", queue="fedgov.deadlines", **COMMON)
def deadlines_sweep() -> dict:
    """Beat, every few seconds: exits whose notice ran out, expired agreements."""
    from .services.agreements import agreements_apply_due_changes

    return agreements_apply_due_changes()
