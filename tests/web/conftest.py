"""Fixtures of the web UI tests: the shared cast, a round awaiting approval, a completed
round with a ledger history, and a client logged in as any actor."""

from __future__ import annotations

import pytest
from django.test import Client

from federation.models import TrainingRound
from federation.services.rounds import round_request
from tests.factories import Cast, OrganisationFactory, UserFactory, member
from tests.web.helpers import complete_a_round


@pytest.fixture
def as_user(db):
    """as_user(user) -> a test client logged in as `user` (None: anonymous)."""

    def make(user) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def waiting_round(cast: Cast) -> TrainingRound:
    """Round 1 of the cast's plan, awaiting the three organisations' approvals."""
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL, round.reason
    return round


@pytest.fixture
def completed_round(cast: Cast) -> TrainingRound:
    """A round that ran and charged every dataset's ledger (see helpers.complete_a_round)."""
    return complete_a_round(cast)


@pytest.fixture
def stranger_rep(cast: Cast):
    """A representative of an organisation that is no party to the cast's agreement."""
    org = OrganisationFactory(slug="org-z", name="Org Z")
    return member(UserFactory(username="rep-z"), org)
