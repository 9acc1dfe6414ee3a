"""Giving a standing approval while a round waits is idempotent per organisation: an
organisation that already decided on the round (per round, or by an earlier standing
approval) is not decided for a second time, whoever gives the next standing approval."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from federation.models import Membership, RoundApproval, StandingApproval, TrainingRound
from federation.services.rounds import round_approve, round_request, standing_approval_give
from federation.services.tokens import token_issue
from tests.factories import UserFactory, build_cast, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast():
    return build_cast()


@pytest.fixture
def waiting(cast):
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL
    return round


def approvals(round) -> list[tuple[str, bool]]:
    return sorted(
        (a.organisation.slug, a.standing_approval_id is not None)
        for a in RoundApproval.objects.filter(round=round).select_related("organisation")
    )


def web_standing_approval(user, plan, org, **data):
    client = Client()
    client.force_login(user)
    return client.post(reverse("web:standing_approval", args=[plan.pk, org.slug]), data or {"max_rounds": 3})


def test_a_second_organisations_standing_approval_does_not_reapply_the_first(cast, waiting):
    standing_approval_give(actor=cast.rep_a, plan=cast.plan, organisation=cast.org_a, max_rounds=3)
    assert approvals(waiting) == [("org-a", True)]
    # B's standing approval used to re-apply A's too: UNIQUE constraint failed, a 500.
    response = web_standing_approval(cast.rep_b, cast.plan, cast.org_b)
    assert response.status_code == 302, response.content[:500]
    assert approvals(waiting) == [("org-a", True), ("org-b", True)]


def test_two_representatives_per_round_then_standing_then_another_organisation(cast, waiting):
    """rep A approves the waiting round per round (API); a second representative of A gives a
    standing approval; then B does too. One approval row per organisation, no error."""
    rep_a2 = member(UserFactory(username="rep-a2"), cast.org_a, Membership.Role.REPRESENTATIVE)
    _, key = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read", "approve"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = api.post(f"/api/v1/rounds/{waiting.pk}/approve/", {"organisation": cast.org_a.pk}, format="json")
    assert response.status_code == 200, response.json()

    response = web_standing_approval(rep_a2, cast.plan, cast.org_a)
    assert response.status_code == 302, response.content[:500]
    assert approvals(waiting) == [("org-a", False)]  # the per-round approval stands, once

    response = web_standing_approval(cast.rep_b, cast.plan, cast.org_b)
    assert response.status_code == 302, response.content[:500]
    assert approvals(waiting) == [("org-a", False), ("org-b", True)]
    assert StandingApproval.objects.filter(plan=cast.plan).count() == 2


def test_two_standing_approvals_of_one_organisation_give_one_approval(cast, waiting):
    rep_a2 = member(UserFactory(username="rep-a2"), cast.org_a, Membership.Role.REPRESENTATIVE)
    standing_approval_give(actor=cast.rep_a, plan=cast.plan, organisation=cast.org_a, max_rounds=3)
    standing_approval_give(actor=rep_a2, plan=cast.plan, organisation=cast.org_a, max_epsilon=5.0)
    standing_approval_give(actor=cast.rep_b, plan=cast.plan, organisation=cast.org_b, max_rounds=3)
    assert approvals(waiting) == [("org-a", True), ("org-b", True)]


def test_the_last_standing_approval_needed_approves_the_round(cast, waiting):
    round_approve(actor=cast.rep_a, round=waiting, organisation=cast.org_a)
    standing_approval_give(actor=cast.rep_b, plan=cast.plan, organisation=cast.org_b, max_rounds=3)
    standing_approval_give(actor=cast.rep_c, plan=cast.plan, organisation=cast.org_c, max_rounds=3)
    waiting.refresh_from_db()
    assert waiting.status == TrainingRound.Status.APPROVED
    assert approvals(waiting) == [("org-a", False), ("org-b", True), ("org-c", True)]


def test_standing_approvals_given_before_the_round_apply_once_each(cast):
    rep_a2 = member(UserFactory(username="rep-a2"), cast.org_a, Membership.Role.REPRESENTATIVE)
    standing_approval_give(actor=cast.rep_a, plan=cast.plan, organisation=cast.org_a, max_rounds=3)
    standing_approval_give(actor=rep_a2, plan=cast.plan, organisation=cast.org_a, max_rounds=5)
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert approvals(round) == [("org-a", True)]
