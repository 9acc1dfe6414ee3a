"""The plan form in two steps (issues #15 item 1, #16 item 4): "Propose a schedule" fills the
planner's values and shows its explanation; "Preview" runs every definition-time check and
shows the whole plan's epsilon per dataset against its remaining budget without saving;
"Define" saves; every failure is shown at once next to its field."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from federation.models import TrainingPlan
from federation.services.proposals import plan_propose
from tests.federation.test_plan_definition import lean_dataset_of_org_c
from tests.web.test_forms import field_errors, plan_post

pytestmark = pytest.mark.django_db


def step_one(cast, **overrides) -> dict:
    data = {
        "agreement": cast.agreement.pk, "name": "Proposed", "purpose": "model evaluation",
        "datasets": [d.pk for d in cast.datasets], "model_kind": "logreg", "hidden": "", "rounds_total": "3",
        "batch_size": "64", "phase_timeout_seconds": "120",
    }
    data.update(overrides)
    return data


def input_value(html: str, name: str) -> str | None:
    tag = re.search(r'<input[^>]*name="' + re.escape(name) + r'"[^>]*>', html)
    if not tag:
        return None
    value = re.search(r'value="([^"]*)"', tag.group(0))
    return value.group(1) if value else ""


def test_every_error_is_shown_at_once_next_to_its_field(cast, as_user):
    lean = lean_dataset_of_org_c(cast)
    before = TrainingPlan.objects.count()
    datasets = [cast.datasets[0].pk, cast.datasets[1].pk, lean.pk]
    response = as_user(cast.admin).post(
        reverse("web:plan_create"), plan_post(cast, noise_multiplier="0.75", clip_norm="5", datasets=datasets)
    )
    assert response.status_code == 200
    assert any("below the floor 0.8" in m for m in field_errors(response, "noise_multiplier"))
    assert any("exceeds the ceiling 2.0" in m for m in field_errors(response, "clip_norm"))
    assert any("org-c-lean lacks features glucose" in m for m in field_errors(response, "datasets"))
    assert TrainingPlan.objects.count() == before


def test_propose_fills_the_planners_values_and_shows_its_explanation(cast, as_user):
    response = as_user(cast.admin).post(reverse("web:plan_create"), {**step_one(cast), "action": "propose"})
    assert response.status_code == 200
    html = response.content.decode()
    proposal = plan_propose(agreement=cast.agreement, datasets=cast.datasets, rounds_total=3, model_spec={"kind": "logreg"})
    assert float(input_value(html, "noise_multiplier")) == proposal.values["noise_multiplier"]
    assert float(input_value(html, "clip_norm")) == proposal.values["clip_norm"]
    assert int(input_value(html, "local_steps")) == proposal.values["local_steps"]
    assert 'id="plan-explanation"' in html and "noise multiplier z =" in html
    assert 'id="plan-projection"' in html
    assert 'class="field has-error"' not in html  # step 1 is complete: nothing to correct yet
    assert not TrainingPlan.objects.filter(name="Proposed").exists()


def test_preview_shows_the_projection_table_and_saves_nothing(cast, as_user):
    before = TrainingPlan.objects.count()
    response = as_user(cast.admin).post(reverse("web:plan_create"), {**plan_post(cast), "action": "preview"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Projected epsilon of the whole plan per dataset vs remaining budget" in html
    assert "Every check passes" in html
    for dataset in cast.datasets:
        assert f'data-dataset="{dataset.slug}"' in html
    assert TrainingPlan.objects.count() == before


def test_preview_of_a_plan_over_budget_shows_the_figures_next_to_the_rounds(cast, as_user):
    response = as_user(cast.admin).post(reverse("web:plan_create"), {**plan_post(cast, rounds_total="40"), "action": "preview"})
    assert any("over its budget of 8.000" in m for m in field_errors(response, "rounds_total"))
    assert "(over budget)" in response.content.decode()


def test_defining_from_the_proposal_stores_its_explanation(cast, as_user):
    client = as_user(cast.admin)
    proposed = client.post(reverse("web:plan_create"), {**step_one(cast), "action": "propose"}).content.decode()
    data = step_one(cast)
    for name in ("noise_multiplier", "clip_norm", "sampling_rate", "local_steps", "learning_rate", "momentum",
                 "server_learning_rate", "server_optimizer", "eval_noise_multiplier"):
        data[name] = (input_value(proposed, name) or "").replace("&quot;", '"')
    response = client.post(reverse("web:plan_create"), {**data, "proposed": "on", "action": "create"})
    assert response.status_code == 302, field_errors(response, "noise_multiplier")
    plan = TrainingPlan.objects.get(name="Proposed")
    proposal = plan_propose(agreement=cast.agreement, datasets=cast.datasets, rounds_total=3, model_spec={"kind": "logreg"})
    assert plan.explanation == proposal.explanation
    assert plan.server_optimizer == proposal.values["server_optimizer"]
