"""A plan takes at most one dataset per organisation: each organisation is one party of the
secure-aggregation roster. Refused when the plan is defined (service, API, web form), and a
plan that slipped in (defined before the rule) is BLOCKED by a named governance check instead
of failing every round start."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from django.urls import reverse
from rest_framework.test import APIClient

from federation import governance
from federation.models import Membership, RoundParticipant, TrainingPlan, TrainingRound
from federation.services.agents import agent_enrol
from federation.services.datasets import dataset_register
from federation.services.plan_checks import DuplicateOrganisation
from federation.services.plans import plan_create
from federation.services.rounds import round_approve, round_request, round_start
from federation.services.tokens import token_issue
from tests.factories import BOUNDS, FEATURES, UserFactory, build_cast, member
from tests.tamper import triggers_lifted

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast():
    return build_cast()


def second_dataset_of_org_a(cast):
    return dataset_register(
        actor=cast.rep_a,
        organisation=cast.org_a,
        agreement=cast.agreement,
        slug="org-a-more-records",
        name="Org A more records",
        record_count=350,
        feature_names=list(FEATURES),
        label_name="outcome",
        label_classes=["no", "yes"],
        feature_bounds=[list(b) for b in BOUNDS],
        epsilon_budget=8.0,
        delta=1e-5,
    )


def plan_kwargs(cast, datasets) -> dict:
    return dict(
        actor=cast.admin,
        agreement=cast.agreement,
        name="Twice A",
        purpose="diabetes risk research",
        datasets=datasets,
        model_spec={"kind": "logreg"},
        noise_multiplier=1.1,
        clip_norm=1.0,
        batch_size=32,
        local_steps=5,
    )


def test_the_service_refuses_two_datasets_of_one_organisation(cast):
    extra = second_dataset_of_org_a(cast)
    with pytest.raises(DuplicateOrganisation) as info:
        plan_create(**plan_kwargs(cast, [*cast.datasets, extra]))
    assert info.value.code == "one_dataset_per_organisation"
    (message,) = info.value.details["fields"]["datasets"]
    assert "Org A" in message and "org-a-records" in message and "org-a-more-records" in message
    assert not TrainingPlan.objects.filter(name="Twice A").exists()


def test_the_api_answers_400_next_to_the_datasets_field(cast):
    extra = second_dataset_of_org_a(cast)
    _, key = token_issue(actor=cast.admin, user=cast.admin, scopes=["read", "approve"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    body = {k: v for k, v in plan_kwargs(cast, []).items() if k != "actor"}
    body.update(agreement=cast.agreement.pk, datasets=[d.pk for d in [*cast.datasets, extra]])
    response = client.post("/api/v1/plans/", body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "one_dataset_per_organisation"
    assert "datasets" in response.json()["details"]["fields"]
    assert not TrainingPlan.objects.filter(name="Twice A").exists()


def test_the_web_form_shows_the_error_next_to_the_datasets(cast, client):
    extra = second_dataset_of_org_a(cast)
    client.force_login(cast.admin)
    data = {
        "agreement": cast.agreement.pk,
        "name": "Twice A",
        "purpose": "diabetes risk research",
        "datasets": [d.pk for d in [*cast.datasets, extra]],
        "model_kind": "logreg",
        "rounds_total": 5,
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "batch_size": 32,
        "local_steps": 5,
        "learning_rate": 0.5,
        "momentum": 0.0,
        "server_learning_rate": 1.0,
        "phase_timeout_seconds": 120,
    }
    response = client.post(reverse("web:plan_create"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "datasets" in errors and "at most one dataset per organisation" in errors["datasets"][0]
    assert not TrainingPlan.objects.filter(name="Twice A").exists()


def slipped_in(cast) -> TrainingPlan:
    """The cast's plan with a second dataset of org A added behind the service's back, as a plan
    defined before the rule would be."""
    cast.plan.datasets.add(second_dataset_of_org_a(cast))
    return cast.plan


def test_governance_blocks_a_round_of_a_plan_that_slipped_in(cast):
    round = round_request(actor=cast.admin, plan=slipped_in(cast))
    assert round.status == TrainingRound.Status.BLOCKED
    check = governance.GovernanceReport(
        stage="request", checks=[governance.Check(**c) for c in round.governance_report["checks"]], checked_at=""
    ).check(governance.ONE_DATASET_PER_ORGANISATION)
    assert not check.passed
    assert "Org A has org-a-more-records, org-a-records" in check.reason
    assert check.details == {"organisations": {"Org A": ["org-a-more-records", "org-a-records"]}}


def test_the_check_passes_for_one_dataset_per_organisation(cast):
    round = round_request(actor=cast.admin, plan=cast.plan)
    report = governance.governance_report(round)
    assert report.check(governance.ONE_DATASET_PER_ORGANISATION).passed


def test_an_approved_round_of_such_a_plan_is_blocked_at_start_not_a_crash(cast):
    for org in (cast.org_a, cast.org_b, cast.org_c):
        user = cast.agent_a if org == cast.org_a else member(UserFactory(username=f"agent-{org.slug}"), org, Membership.Role.AGENT)
        agent_enrol(user=user, public_key_hex=Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex())
    round = round_request(actor=cast.admin, plan=cast.plan)
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        round.refresh_from_db()
        if round.status == TrainingRound.Status.AWAITING_APPROVAL:
            round_approve(actor=rep, round=round, organisation=org)
    round.refresh_from_db()
    assert round.status == TrainingRound.Status.APPROVED
    # the second dataset joins the plan (and the round) behind the services' back, before the
    # start task runs: what a plan from before the rule, or a compromised database, looks like
    extra = second_dataset_of_org_a(cast)
    with triggers_lifted():
        cast.plan.datasets.add(extra)
        RoundParticipant.objects.create(round=round, dataset=extra)
    with transaction.atomic():
        started = round_start(round_id=round.pk)
    assert started.status == TrainingRound.Status.BLOCKED
    assert governance.ONE_DATASET_PER_ORGANISATION in started.reason
