"""Fixtures of the accounting tests."""

from __future__ import annotations

import pytest

from accounting.services import budget as services
from federation.models import TrainingRound
from tests.accounting.helpers import make_rounds, set_status


class History:
    """Dataset A's chain after a small but complete history:

    #1 GRANT (registration)  #2 RESERVE r1  #3 RESERVE r2  #4 COMMIT r1  #5 RELEASE r2
    #6 GRANT (raised)        #7 RESERVE r3  #8 COMMIT r3   (datasets B and C alike)
    """

    def __init__(self, cast):
        self.cast = cast
        self.dataset = cast.datasets[0]
        self.r1, self.r2, self.r3, self.spare = make_rounds(cast.plan, 4)
        admin = cast.admin
        services.budget_reserve(round=self.r1, actor=admin)
        services.budget_reserve(round=self.r2, actor=admin)
        services.budget_commit(round=self.r1, actor=admin)
        set_status(self.r2, TrainingRound.Status.ABORTED)
        services.budget_release(round=self.r2, actor=admin, reason="aborted before training", no_update_released=True)
        for d in cast.datasets:
            services.budget_grant(dataset=d, epsilon_budget=9.0, actor=admin)
        services.budget_reserve(round=self.r3, actor=admin)
        services.budget_commit(round=self.r3, actor=admin)


@pytest.fixture
def history(cast):
    from accounting import heads

    h = History(cast)
    for d in cast.datasets:
        heads.sign_head(d)
    return h


@pytest.fixture
def receipted(cast, tmp_path):
    """A ledger whose COMMITs name tickets, with every partner's receipt, exported to a bundle."""
    from tests.accounting.receipting import build

    return build(cast, tmp_path)
