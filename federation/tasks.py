"""Thin Celery tasks (ARCHITECTURE.md, Conventions 5): they take ids, call one service, and are idempotent.

Task names are stable: the services enqueue them by name after commit
(federation/services/enqueue.py) and never import this module.

Every task is acknowledged late and re-queued if its worker dies (`acks_late`,
`reject_on_worker_lost`); a repeated delivery finds the row already past the state it
expects and returns without doing anything twice. Queues: rounds (start, phase closes),
aggregation (unmask + FedAvg, CPU-heavy, may run on other machines), deadlines (beat).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError

from accounting.heads import sign_pending_heads

from .services.agreements import agreements_apply_due_changes
from .services.rounds import plan_retry, round_aggregate, round_close_phase, round_start
from .services.sweeps import plans_sweep_retries, rounds_sweep_deadlines

logger = logging.getLogger(__name__)

COMMON = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 10,
}


@shared_task(name="fedgov.rounds.start", queue="fedgov.rounds", **COMMON)
def round_start_task(round_id: int) -> str:
    round = round_start(round_id=round_id)
    if round is None:
        logger.info("round %s: not approved any more or gone; nothing to start", round_id)
        return "skipped"
    logger.info("round %s: %s", round_id, round.status)
    return round.status


@shared_task(name="fedgov.rounds.close_phase", queue="fedgov.rounds", **COMMON)
def phase_close_task(round_id: int, phase: str) -> str:
    outcome = round_close_phase(round_id=round_id, phase=phase)
    logger.info("round %s: close %s -> %s", round_id, phase, outcome)
    return outcome


@shared_task(name="fedgov.aggregation.aggregate", queue="fedgov.aggregation", **COMMON)
def round_aggregate_task(round_id: int) -> str:
    outcome = round_aggregate(round_id=round_id)
    logger.info("round %s: aggregate -> %s", round_id, outcome)
    return outcome


@shared_task(name="fedgov.rounds.retry", queue="fedgov.rounds", **COMMON)
def plan_retry_task(plan_id: int) -> str:
    """The next try of a plan whose round was aborted, once its backoff is over."""
    round = plan_retry(plan_id=plan_id)
    if round is None:
        logger.info("plan %s: no retry due (paused, stopped, already retried or not yet time)", plan_id)
        return "skipped"
    logger.info("plan %s: retried as round %s (%s)", plan_id, round.number, round.status)
    return round.status


@shared_task(name="fedgov.deadlines.sweep", queue="fedgov.deadlines", **COMMON)
def deadlines_sweep() -> dict:
    """Beat, every few seconds: phases past their deadline, exits whose notice ran out,
    expired agreements, work whose task was lost (e.g. Redis restarted: a phase close, an
    aggregation, a start, a plan's retry), and ledger heads
    whose after-commit signature did not happen."""
    out = agreements_apply_due_changes()
    out["phases"] = rounds_sweep_deadlines()
    out["retries"] = plans_sweep_retries()
    out["heads_signed"] = len(sign_pending_heads())
    return out
