"""No N+1: every list answers with a bounded number of queries, whatever the page size.

A crowd of 25+ objects per list; each list is read at page size 2 and 25 and must cost the
same number of queries, below a small bound (authentication, the user's groups, the count,
the page, and one query per prefetched relation)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounting.services.budget import budget_grant
from federation.models import Membership, RoundApproval, RoundParticipant, TrainingRound
from federation.services.agreements import agreement_create, agreement_sign, agreement_submit
from federation.services.datasets import dataset_register
from federation.services.organisations import membership_add, organisation_create
from federation.services.plans import plan_create
from federation.services.rounds import round_approve, round_request
from federation.services.tokens import token_issue
from tests.api.conftest import make_model_version
from tests.factories import BOUNDS, FEATURES, UserFactory, build_cast, terms

N = 25
MAX_QUERIES = 10


@pytest.fixture
def crowd(db):
    cast = build_cast()
    admin = cast.admin
    for k in range(N):
        org = organisation_create(actor=admin, slug=f"crowd-{k}", name=f"Crowd {k}")
        membership_add(
            actor=admin, user=UserFactory(username=f"crowd-user-{k}"), organisation=org, role=Membership.Role.REPRESENTATIVE
        )
        agreement = agreement_create(
            actor=admin, parties=[cast.org_a, org], auditors=[cast.auditor], **terms(title=f"Crowd terms {k}")
        )
        agreement = agreement_submit(actor=admin, agreement=agreement)
        agreement_sign(actor=cast.rep_a, agreement=agreement, organisation=cast.org_a, terms_hash=agreement.terms_hash)
    datasets = list(cast.datasets)
    for k in range(N):
        org, rep = [(cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)][k % 3]
        datasets.append(
            dataset_register(
                actor=rep,
                organisation=org,
                agreement=cast.agreement,
                slug=f"crowd-data-{k}",
                name=f"Crowd data {k}",
                record_count=1000 + k,
                feature_names=list(FEATURES),
                label_name="outcome",
                label_classes=["no", "yes"],
                feature_bounds=[list(b) for b in BOUNDS],
                epsilon_budget=9.0,
                delta=1e-5,
            )
        )
    big_plan = None
    for k in range(N):
        plan = plan_create(
            actor=admin,
            agreement=cast.agreement,
            name=f"Crowd plan {k}",
            purpose="diabetes risk research",
            datasets=datasets[:3],  # one dataset per organisation (a plan takes no more)
            model_spec={"kind": "logreg"},
            noise_multiplier=1.1,
            clip_norm=1.0,
            batch_size=32,
            local_steps=5,
        )
        round = round_request(actor=admin, plan=plan)
        round_approve(actor=cast.rep_a, round=round, organisation=cast.org_a)
        make_model_version(plan)
        big_plan = big_plan or plan
    for k in range(N):
        budget_grant(dataset=cast.dataset_a, epsilon_budget=8.0 + k / 10, actor=admin)
        token_issue(actor=admin, user=admin, scopes=["read"], name=f"crowd {k}")
    _, key = token_issue(actor=admin, user=admin, scopes=["read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.get("/api/v1/health/")
    big_round = big_plan.rounds.get()
    # A round with many participants: rows written directly, as no plan can hold two datasets
    # of one organisation (what is measured is the participants list, not how they got there).
    for dataset in datasets[3:]:
        RoundParticipant.objects.create(round=big_round, dataset=dataset)
    # A plan with a long history: N finished rounds, each with its participants and approvals.
    for number in range(2, N + 2):
        past = TrainingRound.objects.create(plan=big_plan, number=number, status=TrainingRound.Status.COMPLETED)
        for dataset in cast.datasets:
            RoundParticipant.objects.create(round=past, dataset=dataset, status=RoundParticipant.Status.FINISHED)
        RoundApproval.objects.create(
            round=past, organisation=cast.org_b, decision=RoundApproval.Decision.APPROVE, decided_by=cast.rep_b
        )
    return cast, client, big_plan, big_round


def list_urls(cast, big_plan, big_round) -> list[str]:
    return [
        "/api/v1/tokens/",
        "/api/v1/organisations/",
        "/api/v1/memberships/",
        "/api/v1/agreements/",
        "/api/v1/datasets/",
        f"/api/v1/datasets/{cast.dataset_a.pk}/ledger/",
        "/api/v1/plans/",
        f"/api/v1/plans/{big_plan.pk}/rounds/",
        "/api/v1/rounds/",
        f"/api/v1/rounds/{big_round.pk}/participants/",
        "/api/v1/events/",
        "/api/v1/model-versions/",
    ]


def count_queries(client, url: str, page_size: int) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, {"page_size": page_size})
    assert response.status_code == 200, (url, response.json())
    return len(ctx.captured_queries), len(response.json()["results"])


def test_list_endpoints_cost_the_same_queries_at_any_page_size(crowd, django_assert_max_num_queries):
    cast, client, big_plan, big_round = crowd
    client.get("/api/v1/tokens/")  # the token's last_used_at is written on first use only
    costs = {}
    for url in list_urls(cast, big_plan, big_round):
        small, small_rows = count_queries(client, url, 2)
        large, large_rows = count_queries(client, url, N)
        assert small_rows == 2, url
        assert large_rows == N, url
        costs[url] = (small, large)
        with django_assert_max_num_queries(MAX_QUERIES):
            client.get(url, {"page_size": N})
    uneven = {url: c for url, c in costs.items() if c[0] != c[1]}
    assert not uneven, f"queries grow with the page size (N+1): {uneven}"
