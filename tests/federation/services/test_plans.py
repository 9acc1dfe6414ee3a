"""services/plans.py refuses bad input with a clear error and changes nothing."""


import pytest

from federation.models import TrainingPlan
from federation.services.plans import plan_create
from fedgov.errors import ValidationFailed

pytestmark = pytest.mark.django_db


def test_plan_purpose_must_be_permitted(cast):
    with pytest.raises(ValidationFailed, match="not among the agreement's permitted purposes"):
        plan_create(
            actor=cast.admin, agreement=cast.agreement, name="P", purpose="advertising", datasets=cast.datasets,
            model_spec={"kind": "logreg"}, noise_multiplier=1.0, clip_norm=1.0,
        )


def test_plan_model_spec_is_checked(cast):
    with pytest.raises(ValidationFailed, match="model_spec.kind"):
        plan_create(
            actor=cast.admin, agreement=cast.agreement, name="P", purpose="model evaluation", datasets=cast.datasets,
            model_spec={"kind": "transformer"}, noise_multiplier=1.0, clip_norm=1.0,
        )


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_plan_sampling_rate_outside_the_unit_interval_is_refused(cast, rate):
    before = TrainingPlan.objects.count()
    with pytest.raises(ValidationFailed) as err:
        plan_create(
            actor=cast.admin, agreement=cast.agreement, name="P", purpose="model evaluation", datasets=cast.datasets,
            model_spec={"kind": "logreg"}, noise_multiplier=1.0, clip_norm=1.0, sampling_rate=rate,
        )
    assert "sampling_rate" in err.value.details["fields"]
    assert TrainingPlan.objects.count() == before


def test_a_plan_samples_every_dataset_at_its_rate_or_at_batch_over_records(cast):
    by_batch = plan_create(
        actor=cast.admin, agreement=cast.agreement, name="Batch", purpose="model evaluation", datasets=cast.datasets,
        model_spec={"kind": "logreg"}, noise_multiplier=1.5, clip_norm=1.0, batch_size=10, rounds_total=2,
    )
    by_rate = plan_create(
        actor=cast.admin, agreement=cast.agreement, name="Rate", purpose="model evaluation", datasets=cast.datasets,
        model_spec={"kind": "logreg"}, noise_multiplier=1.5, clip_norm=1.0, sampling_rate=0.2, rounds_total=2,
    )
    for dataset in cast.datasets:
        assert by_batch.dp_params_for(dataset)["q"] == min(1.0, 10 / dataset.record_count)
        assert by_rate.dp_params_for(dataset)["q"] == 0.2
