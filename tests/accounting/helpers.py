"""Shared builders for the accounting tests (plain functions: child processes use them too)."""

from __future__ import annotations

from federation.models import RoundParticipant, TrainingRound
from tests.tamper import force_update


def make_rounds(
    plan, n: int, *, datasets=None, status: str = TrainingRound.Status.APPROVED, start: int | None = None
) -> list[TrainingRound]:
    """n rounds of `plan`, each with `datasets` (default: the plan's) as participants.

    Bypasses round_request (one live round per plan) on purpose: these tests exercise the
    ledger under many rounds at once, as concurrent plans on the same datasets would."""
    datasets = list(datasets if datasets is not None else plan.datasets.order_by("id"))
    first = start if start is not None else (plan.rounds.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    rounds = TrainingRound.objects.bulk_create([TrainingRound(plan=plan, number=first + i, status=status) for i in range(n)])
    if not rounds or rounds[0].pk is None:  # backends without RETURNING
        rounds = list(plan.rounds.filter(number__gte=first, number__lt=first + n).order_by("number"))
    RoundParticipant.objects.bulk_create([RoundParticipant(round=r, dataset=d) for r in rounds for d in datasets])
    return rounds


def set_status(round, status: str) -> None:
    force_update(TrainingRound, round.pk, status=status)
    round.status = status
