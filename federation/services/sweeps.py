"""Beat safety nets (ARCHITECTURE.md, Rounds): work whose task was lost, e.g. with a restarted
Redis, is enqueued again. Every task is idempotent, so a task sent twice is harmless."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from ..models import TrainingPlan, TrainingRound
from . import enqueue
from .protocol import AGENT_PHASES, AGGREGATE

Status = TrainingRound.Status


def rounds_sweep_deadlines(*, now=None) -> int:
    """Close every phase past its deadline (a countdown task lost is re-created here); also
    re-drive an aggregation or a start that lost its task."""
    now = now or timezone.now()
    n = 0
    for round_id, phase in TrainingRound.objects.filter(
        status__in=(Status.RUNNING, Status.AGGREGATING), phase__in=AGENT_PHASES, phase_deadline__lt=now
    ).values_list("pk", "phase"):
        enqueue.send(enqueue.PHASE_CLOSE, round_id, phase)
        n += 1
    stale = now - timedelta(seconds=30)
    for round_id in TrainingRound.objects.filter(status=Status.AGGREGATING, phase=AGGREGATE, protocol__updated_at__lt=stale).values_list("pk", flat=True):
        enqueue.send(enqueue.ROUND_AGGREGATE, round_id)
        n += 1
    for round_id in TrainingRound.objects.filter(status=Status.APPROVED, requested_at__lt=stale).values_list("pk", flat=True):
        enqueue.send(enqueue.ROUND_START, round_id)
        n += 1
    return n


def plans_sweep_retries(*, now=None) -> int:
    """A retry whose countdown task was lost is enqueued again a few seconds after it fell due."""
    n = 0
    for plan_id in plans_retry_overdue(now=now):
        enqueue.send(enqueue.PLAN_RETRY, plan_id)
        n += 1
    return n


def plans_retry_overdue(*, now=None) -> list[int]:
    """Active plans whose retry fell due more than a few seconds ago and was not made."""
    now = now or timezone.now()
    return list(TrainingPlan.objects.filter(status=TrainingPlan.Status.ACTIVE, retry_at__lt=now - timedelta(seconds=5)).values_list("pk", flat=True))
