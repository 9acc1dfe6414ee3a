import json

import numpy as np
import pytest

from federation.learning import ModelSpec, ModelSpecError, init_params, predict_proba, unflatten


def test_model_spec_round_trips_through_json():
    spec = ModelSpec(kind="mlp", n_features=30, n_classes=2, hidden=(64, 32))
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert spec.to_dict() == {"kind": "mlp", "n_features": 30, "n_classes": 2, "hidden": [64, 32]}


def test_parameter_count_and_layout_follow_the_spec():
    spec = ModelSpec(kind="mlp", n_features=30, n_classes=2, hidden=(64,))
    assert spec.shapes == [(30, 64), (64,), (64, 2), (2,)]
    assert spec.n_params == 30 * 64 + 64 + 64 * 2 + 2
    flat = init_params(spec, seed=0)
    assert flat.dtype == np.float32 and flat.shape == (spec.n_params,)
    W0, b0, W1, b1 = unflatten(flat, spec)
    W1[0, 0] = 123.0  # views, not copies: secure aggregation and the maths share memory
    assert flat[30 * 64 + 64] == 123.0


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "cnn", "n_features": 3, "n_classes": 2},
        {"kind": "logreg", "n_features": 0, "n_classes": 2},
        {"kind": "logreg", "n_features": 3, "n_classes": 1},
        {"kind": "logreg", "n_features": 3, "n_classes": 2, "hidden": [4]},
        {"kind": "mlp", "n_features": 3, "n_classes": 2, "hidden": []},
        {"kind": "mlp", "n_features": 3, "n_classes": 2, "hidden": [0]},
        {"kind": "mlp", "n_features": 3.5, "n_classes": 2, "hidden": [4]},
        {"kind": "logreg", "n_features": 3},
        {"kind": "logreg", "n_features": 3, "n_classes": 2, "depth": 3},
    ],
)
def test_invalid_model_specs_are_refused(bad):
    with pytest.raises(ModelSpecError):
        ModelSpec.from_dict(bad)


def test_init_is_deterministic_under_seed():
    spec = {"kind": "mlp", "n_features": 10, "n_classes": 3, "hidden": [16]}
    a, b, c = init_params(spec, 7), init_params(spec, 7), init_params(spec, 8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_parameters_of_the_wrong_size_are_refused():
    spec = {"kind": "logreg", "n_features": 4, "n_classes": 2}
    with pytest.raises(ModelSpecError, match="needs 10"):
        predict_proba(np.zeros(9, np.float32), spec, np.zeros((1, 4)))
