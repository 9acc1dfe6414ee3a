import numpy as np
import pytest

from federation.learning import (
    LearningError,
    QuantSpec,
    apply_update,
    fedavg_weights,
    modular_sum,
    secagg_input,
    secure_average,
    weighted_average,
)


def test_fedavg_weights_are_proportional_to_declared_counts():
    assert fedavg_weights({"a": 100, "b": 300}) == {"a": 0.25, "b": 0.75}
    np.testing.assert_allclose(fedavg_weights([1, 1, 2]), [0.25, 0.25, 0.5])


@pytest.mark.parametrize("counts", [[], [0, 3], [-1, 3], [1.5, 2]])
def test_fedavg_weights_refuse_non_positive_or_fractional_counts(counts):
    with pytest.raises(LearningError):
        fedavg_weights(counts)


def test_weighted_average_in_the_clear():
    u = [np.array([1.0, 0.0]), np.array([0.0, 4.0])]
    np.testing.assert_allclose(weighted_average(u, [0.25, 0.75]), [0.25, 3.0])


def _round(updates, counts, survivors, n_parties=None):
    weights = fedavg_weights(counts)
    spec = QuantSpec(clip=1.0, n_parties=n_parties or len(counts))
    rng = np.random.default_rng(0)
    inputs = [secagg_input(updates[k], weights[k], spec, rng) for k in survivors]
    return secure_average(modular_sum(inputs), spec, weights, survivors), spec, weights


def test_secure_path_equals_weighted_fedavg():
    rng = np.random.default_rng(1)
    counts = {"a": 120, "b": 40, "c": 240}
    updates = {k: rng.uniform(-0.5, 0.5, 300) for k in counts}
    avg, spec, weights = _round(updates, counts, list(counts))
    expected = weighted_average([updates[k] for k in counts], list(counts.values()))
    assert np.abs(avg - expected).max() <= spec.rounding_bound(3)
    assert np.abs(avg - np.mean(list(updates.values()), axis=0)).max() > 0.01  # weighting matters


def test_survivors_are_renormalised_by_their_total_weight():
    rng = np.random.default_rng(2)
    counts = {"a": 120, "b": 40, "c": 240}
    updates = {k: rng.uniform(-0.5, 0.5, 300) for k in counts}
    avg, spec, weights = _round(updates, counts, ["a", "b"])  # c dropped out
    expected = weighted_average([updates["a"], updates["b"]], [120, 40])
    assert np.abs(avg - expected).max() <= spec.rounding_bound(2) / (weights["a"] + weights["b"])


def test_secure_average_refuses_unknown_or_repeated_survivors():
    spec = QuantSpec(clip=1.0, n_parties=2)
    s = np.zeros(3, np.uint32)
    with pytest.raises(LearningError):
        secure_average(s, spec, {"a": 0.5, "b": 0.5}, ["a", "z"])
    with pytest.raises(LearningError):
        secure_average(s, spec, {"a": 0.5, "b": 0.5}, ["a", "a"])
    with pytest.raises(LearningError):
        secure_average(s, spec, {"a": 0.5, "b": 0.5}, [])


def test_apply_update_uses_the_server_learning_rate():
    new = apply_update(np.array([1.0, 2.0], np.float32), np.array([0.5, -1.0]), server_lr=2.0)
    assert new.dtype == np.float32
    np.testing.assert_allclose(new, [2.0, 0.0])
    with pytest.raises(LearningError):
        apply_update(np.zeros(2, np.float32), np.zeros(3), 1.0)
    with pytest.raises(LearningError):
        apply_update(np.zeros(2, np.float32), np.array([np.nan, 0]), 1.0)
