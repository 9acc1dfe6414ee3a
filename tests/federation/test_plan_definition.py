"""A plan is checked against its agreement when it is defined (issue #16 item 4): every rule
a round request would break that is known at definition is reported at once, each next to its
field, and a plan whose rounds the remaining budgets cannot all pay for is refused with the
figures unless `allow_partial`. The round-time report keeps its own checks (test_governance)."""

from __future__ import annotations

import pytest

from federation import governance
from federation.models import TrainingPlan
from federation.services.datasets import dataset_register
from federation.services.plan_checks import PLANNED_FIELDS, plan_check
from federation.services.plans import plan_create
from federation.services.proposals import plan_fill, plan_propose
from fedgov.errors import ValidationFailed
from tests.factories import BOUNDS, FEATURES, build_cast
from tests.web.helpers import complete_a_round

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast():
    return build_cast()


def lean_dataset_of_org_c(cast):
    """Org C's second dataset, which lacks the 'glucose' feature (the plan uses one per org)."""
    return dataset_register(
        actor=cast.rep_c, organisation=cast.org_c, agreement=cast.agreement, slug="org-c-lean", name="Org C lean",
        record_count=500, feature_names=FEATURES[:2], label_name="outcome", label_classes=["no", "yes"],
        feature_bounds=[list(b) for b in BOUNDS[:2]], epsilon_budget=8.0, delta=1e-5,
    )


def kwargs(cast, **overrides) -> dict:
    out = dict(
        actor=cast.admin, agreement=cast.agreement, name="Second", purpose="model evaluation", datasets=cast.datasets,
        model_spec={"kind": "logreg"}, rounds_total=3, noise_multiplier=1.1, clip_norm=1.0, batch_size=32, local_steps=5,
    )
    out.update(overrides)
    return out


def test_every_failure_is_reported_at_once_next_to_its_field(cast):
    before = TrainingPlan.objects.count()
    datasets = [cast.datasets[0], cast.datasets[1], lean_dataset_of_org_c(cast)]
    with pytest.raises(ValidationFailed) as info:
        plan_create(**kwargs(cast, datasets=datasets, noise_multiplier=0.75, clip_norm=5.0, purpose="marketing"))
    fields = info.value.details["fields"]
    assert info.value.code == "validation_failed"
    assert set(fields) == {"noise_multiplier", "clip_norm", "feature_names", "purpose"}, fields
    assert any("noise multiplier 0.75 is below the floor 0.8" in m for m in fields["noise_multiplier"])
    assert any("exceeds the ceiling 2.0" in m for m in fields["clip_norm"])
    assert any("org-c-lean lacks features glucose" in m for m in fields["feature_names"])
    assert len(fields["purpose"]) == 1
    assert TrainingPlan.objects.count() == before


def test_the_per_round_ceiling_counts_the_evaluation_releases(cast):
    # Without evaluation one round fits the ceiling; the evaluation releases push it over.
    plan_check(**kwargs(cast))
    with pytest.raises(ValidationFailed) as info:
        plan_check(**kwargs(cast, eval_noise_multiplier=0.3))
    assert any("above the per-round ceiling 4.0" in m for m in info.value.details["fields"]["noise_multiplier"])


def test_participants_below_the_agreement_minimum_are_refused(cast):
    with pytest.raises(ValidationFailed) as info:
        plan_check(**kwargs(cast, datasets=cast.datasets[:1]))
    assert any("the agreement requires at least 2" in m for m in info.value.details["fields"]["datasets"])


def test_a_plan_over_the_remaining_budget_is_refused_with_the_figures(cast):
    with pytest.raises(ValidationFailed) as info:
        plan_create(**kwargs(cast, rounds_total=40))
    (message, *_) = info.value.details["fields"]["rounds_total"]
    assert "the whole plan (40 rounds) costs epsilon" in message and "over its budget of 8.000" in message
    assert "round(s) fit" in message
    by_dataset = {p["dataset"]: p for p in info.value.details["projection"]}
    assert not by_dataset["org-b-records"]["fits"] and by_dataset["org-b-records"]["plan_epsilon"] > 8.0
    assert 0 < by_dataset["org-b-records"]["rounds_affordable"] < 40
    assert not TrainingPlan.objects.filter(name="Second").exists()


def test_allow_partial_accepts_it_with_a_warning_in_the_explanation(cast):
    plan = plan_create(**kwargs(cast, rounds_total=40, allow_partial=True))
    assert "later rounds will be blocked by the budget check" in plan.explanation
    assert "org-b-records: the remaining budget (8.000) covers" in plan.explanation


def test_the_projection_composes_what_is_already_spent(cast):
    fresh = {p.dataset: p for p in governance.plan_projection(cast.plan, cast.datasets)}
    complete_a_round(cast)
    after = {p.dataset: p for p in governance.plan_projection(cast.plan, cast.datasets)}
    for slug, p in after.items():
        assert p.spent > 0 and p.remaining == pytest.approx(p.budget - p.spent)
        assert p.projected_spent > fresh[slug].projected_spent
        assert p.plan_epsilon == pytest.approx(fresh[slug].plan_epsilon)


def test_the_planner_fills_what_is_left_out_and_its_proposal_passes_the_checks(cast):
    filled, explanation = plan_fill(
        agreement=cast.agreement, datasets=cast.datasets, rounds_total=3, model_spec={"kind": "logreg"}, given={"clip_norm": 1.5}
    )
    proposal = plan_propose(agreement=cast.agreement, datasets=cast.datasets, rounds_total=3, model_spec={"kind": "logreg"})
    assert set(filled) == set(PLANNED_FIELDS)
    assert filled["clip_norm"] == 1.5 and filled["noise_multiplier"] == proposal.values["noise_multiplier"]
    assert explanation.startswith(proposal.explanation) and "set by hand instead of the proposal: clip_norm" in explanation
    base = {k: v for k, v in kwargs(cast).items() if k not in PLANNED_FIELDS}
    plan = plan_create(**base, **proposal.values, explanation=proposal.explanation)
    assert plan.noise_multiplier >= cast.agreement.min_noise_multiplier and plan.explanation == proposal.explanation


def test_a_proposal_another_process_made_comes_from_the_shared_cache(cast, monkeypatch):
    """The planner takes seconds; a web process that never ran it for these inputs reads the
    proposal another one stored in the shared cache (Redis in production) instead of
    planning again, and gets the same values."""
    from django.core.cache import cache

    from federation.services import proposals

    cache.clear()
    proposals._proposal.cache_clear()
    args = dict(agreement=cast.agreement, datasets=cast.datasets, rounds_total=4, model_spec={"kind": "logreg"})
    first = plan_propose(**args)
    proposals._proposal.cache_clear()  # as in another process: nothing planned here
    planned = []
    real = proposals.plan_schedule
    monkeypatch.setattr(proposals, "plan_schedule", lambda **kw: planned.append(kw) or real(**kw))
    assert plan_propose(**args) == first and planned == []
    # Other inputs are planned, not served from another key.
    other = plan_propose(**{**args, "rounds_total": 5})
    assert len(planned) == 1 and other.values["noise_multiplier"] > first.values["noise_multiplier"]  # more rounds, same budget


def test_nothing_left_out_means_no_planner(cast):
    given = {name: 1.0 for name in PLANNED_FIELDS}
    filled, explanation = plan_fill(agreement=cast.agreement, datasets=[], rounds_total=3, model_spec=None, given=given)
    assert filled == given and explanation == ""


def test_basic_errors_are_gathered_too_and_nothing_is_computed_from_them(cast):
    with pytest.raises(ValidationFailed) as info:
        plan_check(**kwargs(cast, noise_multiplier=0, clip_norm=0, purpose="marketing", sampling_rate=1.5))
    fields = info.value.details["fields"]
    assert {"noise_multiplier", "clip_norm", "purpose", "sampling_rate"} <= set(fields)
    assert info.value.details["projection"] == []  # no epsilon from a noise of 0
