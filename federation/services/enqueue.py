"""Enqueue a Celery task after the current transaction commits (ARCHITECTURE.md, Conventions 6).

The one place the services hand work to the workers. Tasks are sent by their stable name
through the current Celery app, so this module (and every service) never imports
federation/tasks.py: the tasks import the services, never the reverse. Queues follow the
names (`CELERY_TASK_ROUTES`: fedgov.rounds.*, fedgov.aggregation.*, fedgov.deadlines.*).
Outside a transaction (a beat sweep) the task is sent at once.
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction

ROUND_START = "fedgov.rounds.start"
PHASE_CLOSE = "fedgov.rounds.close_phase"
ROUND_AGGREGATE = "fedgov.aggregation.aggregate"
PLAN_RETRY = "fedgov.rounds.retry"


def send(name: str, *args, countdown: float | None = None) -> None:
    """Send task `name` with `args` now (a task never reads an uncommitted row: use
    after_commit inside a transaction)."""
    current_app.send_task(name, args=list(args), countdown=countdown)


def after_commit(name: str, *args, countdown: float | None = None) -> None:
    """Send task `name` with `args` once the current transaction commits (at once outside
    one); nothing is sent if it rolls back."""
    transaction.on_commit(lambda: send(name, *args, countdown=countdown))
