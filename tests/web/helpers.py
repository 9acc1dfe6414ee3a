"""Builders shared by the view tests and the browser tests."""

from __future__ import annotations

from accounting import heads
from accounting.services import budget as accounting_services
from federation.models import ModelVersion, TrainingRound
from tests.factories import Cast
from tests.tamper import force_update


def complete_a_round(cast: Cast, *, number: int = 1, accuracy: float = 0.81) -> TrainingRound:
    """A round of the cast's plan that ran: reserved, committed, completed with metrics and a
    model version, so ledgers and plan charts have data. Its state is set directly: round
    orchestration is not what the UI tests are about."""
    round = TrainingRound.objects.create(plan=cast.plan, number=number, status=TrainingRound.Status.RUNNING)
    for d in cast.datasets:
        round.participant_links.create(dataset=d, status="finished", last_phase="unmask")
    accounting_services.budget_reserve(round=round, actor=cast.admin)
    accounting_services.budget_commit(round=round, actor=cast.admin)
    force_update(TrainingRound, round.pk, status=TrainingRound.Status.COMPLETED, metrics={"accuracy": accuracy})
    ModelVersion.objects.create(
        plan=cast.plan, round=round, version=number, params=b"", sha256="0" * 64, metrics={"accuracy": accuracy}
    )
    for d in cast.datasets:
        heads.sign_head(d)
    round.refresh_from_db()
    return round
