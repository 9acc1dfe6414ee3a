import json

import numpy as np
import pytest

from federation.learning import (
    DPParameterError,
    EvaluationRelease,
    combine_accuracy,
    evaluate,
    evaluation_event_params,
    init_params,
    release_evaluation,
)

SPEC = {"kind": "logreg", "n_features": 2, "n_classes": 2}
# A model that predicts class 1 when x0 > x1.
PARAMS = np.array([-1, 1, 1, -1, 0, 0], dtype=np.float32)


def data(n_right, n_wrong):
    X = np.array([[1.0, 0.0]] * (n_right + n_wrong), dtype=np.float32)
    y = np.array([1] * n_right + [0] * n_wrong)
    return X, y


def test_plain_accuracy():
    X, y = data(3, 1)
    assert evaluate(PARAMS, SPEC, X, y) == 0.75


def test_release_adds_gaussian_noise_of_std_sigma_to_both_counts():
    X, y = data(30, 10)
    sigma = 4.0
    rel = [release_evaluation(PARAMS, SPEC, X, y, sigma=sigma, seed=s)[0] for s in range(3000)]
    correct = np.array([r.noisy_correct for r in rel])
    total = np.array([r.noisy_total for r in rel])
    assert correct.mean() == pytest.approx(30, abs=0.3)
    assert total.mean() == pytest.approx(40, abs=0.3)
    assert correct.std() == pytest.approx(sigma, rel=0.05)
    assert total.std() == pytest.approx(sigma, rel=0.05)
    assert abs(np.corrcoef(correct, total)[0, 1]) < 0.1  # independent draws


def test_release_returns_the_event_to_charge_and_is_json_ready():
    X, y = data(5, 5)
    release, event = release_evaluation(PARAMS, SPEC, X, y, sigma=2.5, seed=0)
    assert event == {"noise_multiplier": 2.5, "count": 2} == evaluation_event_params(2.5)
    assert release.noise_multiplier == 2.5
    assert EvaluationRelease.from_dict(json.loads(json.dumps(release.to_dict()))) == release


def test_disabled_release_releases_nothing():
    X, y = data(5, 5)
    assert release_evaluation(PARAMS, SPEC, X, y, sigma=None) == (None, None)


@pytest.mark.parametrize("sigma", [0, -1.0, float("nan"), float("inf")])
def test_invalid_sigma_is_refused(sigma):
    X, y = data(5, 5)
    with pytest.raises(DPParameterError):
        release_evaluation(PARAMS, SPEC, X, y, sigma=sigma)


def test_combine_pools_counts_and_skips_missing_partners():
    releases = [
        EvaluationRelease(noisy_correct=80, noisy_total=100, noise_multiplier=1),
        {"noisy_correct": 10, "noisy_total": 50, "noise_multiplier": 1},
        None,
    ]
    assert combine_accuracy(releases) == pytest.approx(90 / 150)


def test_combine_clamps_to_the_unit_interval_and_handles_nothing():
    assert combine_accuracy([EvaluationRelease(12.0, 10.0, 1.0)]) == 1.0
    assert combine_accuracy([EvaluationRelease(-2.0, 10.0, 1.0)]) == 0.0
    assert combine_accuracy([EvaluationRelease(1.0, -0.5, 1.0)]) is None
    assert combine_accuracy([None]) is None
    assert combine_accuracy([]) is None


def test_release_close_to_true_accuracy_when_noise_is_small():
    spec = {"kind": "mlp", "n_features": 2, "n_classes": 2, "hidden": [3]}
    params = init_params(spec, 0)
    X = np.random.default_rng(0).random((500, 2)).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    release, _ = release_evaluation(params, spec, X, y, sigma=0.01, seed=1)
    assert combine_accuracy([release]) == pytest.approx(evaluate(params, spec, X, y), abs=1e-3)
