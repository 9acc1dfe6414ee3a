"""POST /api/v1/plans/ checks the plan against its agreement when it is defined and answers
ONE 400 listing every failing field; the DP-SGD and FedAvg values left out are the planner's
proposal, whose explanation is kept on the plan; plans/propose/ shows the proposal, its
explanation and the whole plan's epsilon per dataset without saving (issues #15 item 1, #16 item 4)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from federation.models import TrainingPlan
from federation.services.plan_checks import PLANNED_FIELDS
from federation.services.proposals import plan_propose
from federation.services.tokens import token_issue
from tests.factories import build_cast

pytestmark = pytest.mark.django_db

PLANS = "/api/v1/plans/"
PROPOSE = "/api/v1/plans/propose/"


@pytest.fixture
def cast():
    return build_cast()


def client_for(cast, user) -> APIClient:
    _, key = token_issue(actor=cast.admin, user=user, scopes=["read", "approve"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def body(cast, **overrides) -> dict:
    out = {
        "agreement": cast.agreement.pk, "name": "Second", "purpose": "model evaluation",
        "datasets": [d.pk for d in cast.datasets], "model_spec": {"kind": "logreg"}, "rounds_total": 3,
        "noise_multiplier": 1.1, "clip_norm": 1.0, "batch_size": 32, "local_steps": 5, "learning_rate": 0.5,
        "momentum": 0.0, "server_learning_rate": 1.0, "server_optimizer": {}, "eval_noise_multiplier": None, "sampling_rate": None,
    }
    out.update(overrides)
    return out


def test_one_400_lists_the_floor_the_ceiling_and_the_schema(cast):
    before = TrainingPlan.objects.count()
    response = client_for(cast, cast.admin).post(
        PLANS, body(cast, noise_multiplier=0.75, clip_norm=5.0, feature_names=["age", "bmi", "glucose", "insulin"]), format="json"
    )
    assert response.status_code == 400, response.json()
    payload = response.json()
    assert payload["code"] == "validation_failed"
    fields = payload["details"]["fields"]
    assert {"noise_multiplier", "clip_norm", "feature_names"} <= set(fields), fields
    assert any("below the floor 0.8" in m for m in fields["noise_multiplier"])
    assert any("exceeds the ceiling 2.0" in m for m in fields["clip_norm"])
    assert any("lacks features insulin" in m for m in fields["feature_names"])
    assert TrainingPlan.objects.count() == before


def test_a_plan_over_the_remaining_budget_is_refused_with_the_figures(cast):
    response = client_for(cast, cast.admin).post(PLANS, body(cast, rounds_total=40), format="json")
    assert response.status_code == 400
    details = response.json()["details"]
    assert any("over its budget of 8.000" in m and "round(s) fit" in m for m in details["fields"]["rounds_total"])
    assert {p["dataset"] for p in details["projection"] if not p["fits"]}
    accepted = client_for(cast, cast.admin).post(PLANS, body(cast, rounds_total=40, allow_partial=True), format="json")
    assert accepted.status_code == 201, accepted.json()
    assert "later rounds will be blocked by the budget check" in accepted.json()["explanation"]


def test_fields_left_out_are_the_planners_and_the_explanation_is_returned(cast):
    minimal = {k: v for k, v in body(cast).items() if k not in PLANNED_FIELDS}
    response = client_for(cast, cast.admin).post(PLANS, minimal, format="json")
    assert response.status_code == 201, response.json()
    proposal = plan_propose(agreement=cast.agreement, datasets=cast.datasets, rounds_total=3, model_spec={"kind": "logreg"})
    plan = TrainingPlan.objects.get(pk=response.json()["id"])
    for name in PLANNED_FIELDS:
        assert getattr(plan, name) == proposal.values[name], name
    assert response.json()["explanation"] == proposal.explanation == plan.explanation
    assert "noise multiplier z =" in plan.explanation


def test_a_value_given_overrides_the_proposal_and_the_explanation_says_so(cast):
    minimal = {k: v for k, v in body(cast).items() if k not in PLANNED_FIELDS}
    response = client_for(cast, cast.admin).post(PLANS, {**minimal, "clip_norm": 1.5}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["clip_norm"] == 1.5
    assert "set by hand instead of the proposal: clip_norm" in response.json()["explanation"]


def test_propose_returns_the_schedule_its_explanation_and_the_projection_without_saving(cast):
    before = TrainingPlan.objects.count()
    response = client_for(cast, cast.admin).post(
        PROPOSE, {"agreement": cast.agreement.pk, "datasets": [d.pk for d in cast.datasets], "rounds_total": 3}, format="json"
    )
    assert response.status_code == 200, response.json()
    payload = response.json()
    assert set(payload["values"]) == set(PLANNED_FIELDS)
    assert payload["values"]["noise_multiplier"] >= cast.agreement.min_noise_multiplier
    assert payload["values"]["clip_norm"] <= cast.agreement.max_clip_norm
    assert payload["explanation"]
    assert {p["dataset"] for p in payload["projection"]} == {d.slug for d in cast.datasets}
    assert all(p["fits"] and p["plan_epsilon"] <= p["remaining"] for p in payload["projection"])
    assert TrainingPlan.objects.count() == before


def test_propose_is_for_administrators(cast):
    response = client_for(cast, cast.rep_a).post(
        PROPOSE, {"agreement": cast.agreement.pk, "datasets": [cast.dataset_a.pk], "rounds_total": 3}, format="json"
    )
    assert response.status_code == 403
