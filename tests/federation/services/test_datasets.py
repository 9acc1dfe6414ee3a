"""services/datasets.py refuses bad input with a clear error and changes nothing."""


import pytest

from federation.models import Agreement, AgreementSignature, Dataset, GovernanceEvent
from federation.services.datasets import dataset_raise_budget, dataset_register
from fedgov.errors import ValidationFailed
from tests.factories import BOUNDS, FEATURES

pytestmark = pytest.mark.django_db


def counts():
    return (Agreement.objects.count(), AgreementSignature.objects.count(), Dataset.objects.count(), GovernanceEvent.objects.count())


def test_dataset_budget_above_the_terms_is_refused(cast):
    before = counts()
    with pytest.raises(ValidationFailed, match="exceeds the agreement's maximum of 10.0") as err:
        dataset_register(
            actor=cast.rep_a, organisation=cast.org_a, agreement=cast.agreement, slug="big", name="Big", record_count=10,
            feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=11, delta=1e-6,
            feature_bounds=[list(b) for b in BOUNDS],
        )
    assert "epsilon_budget" in err.value.details["fields"]
    assert counts() == before


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"epsilon_budget": 0}, "epsilon_budget"),
        ({"epsilon_budget": -2}, "epsilon_budget"),
        ({"delta": 1e-3}, "delta"),
        ({"record_count": 0}, "record_count"),
        ({"feature_names": []}, "feature_names"),
        ({"label_classes": ["only"]}, "label_classes"),
        ({"feature_bounds": [[0, 1]]}, "feature_bounds"),
        ({"feature_bounds": None}, "feature_bounds"),
        ({"feature_bounds": [[1, 0], [0, 1], [0, 1]]}, "feature_bounds"),
        ({"feature_transforms": {FEATURES[0]: "cube"}}, "feature_transforms"),
        ({"feature_transforms": {"not-a-feature": "log1p"}}, "feature_transforms"),
        ({"feature_transforms": [FEATURES[0], "log1p"]}, "feature_transforms"),
        ({"feature_transforms": {FEATURES[0]: "log1p"}, "feature_bounds": [[-1, 1], [0, 1], [0, 1]]}, "feature_transforms"),
        ({"centred": "yes"}, "centred"),
    ],
)
def test_dataset_bad_metadata_is_refused(cast, overrides, field):
    kwargs = dict(
        actor=cast.rep_a, organisation=cast.org_a, agreement=cast.agreement, slug="bad", name="Bad", record_count=10,
        feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=1.0, delta=1e-6,
        feature_bounds=[list(b) for b in BOUNDS],
    )
    kwargs.update(overrides)
    before = counts()
    with pytest.raises(ValidationFailed) as err:
        dataset_register(**kwargs)
    assert field in err.value.details["fields"]
    assert counts() == before


def test_a_dataset_declares_public_transforms_and_centring_that_partners_load_with(cast):
    dataset = dataset_register(
        actor=cast.rep_a, organisation=cast.org_a, agreement=cast.agreement, slug="scaled", name="Scaled", record_count=10,
        feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=1.0, delta=1e-6,
        feature_bounds=[list(b) for b in BOUNDS], feature_transforms={FEATURES[1]: "log1p", FEATURES[0]: "none"}, centred=True,
    )
    dataset.refresh_from_db()
    # "none" is not stored; what is stored is what the partner's loader is given.
    assert dataset.feature_transforms == {FEATURES[1]: "log1p"} and dataset.centred
    schema = dataset.schema()
    assert schema["feature_transforms"] == {FEATURES[1]: "log1p"} and schema["centred"] is True


def test_budget_can_only_be_raised(cast):
    with pytest.raises(ValidationFailed, match="only be raised"):
        dataset_raise_budget(actor=cast.rep_a, dataset=cast.dataset_a, epsilon_budget=2.0)
    dataset_raise_budget(actor=cast.rep_a, dataset=cast.dataset_a, epsilon_budget=9.0)
    cast.dataset_a.refresh_from_db()
    assert cast.dataset_a.epsilon_budget == 9.0
