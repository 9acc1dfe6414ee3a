import numpy as np
import pytest

import federation.learning.dpsgd as dpsgd_module
from federation.learning import (
    DPParameterError,
    ModelSpec,
    clipped_gradient_sum,
    evaluate,
    init_params,
    noisy_gradient,
    per_example_gradients,
    per_example_loss,
    poisson_sample,
    train_round,
    validate_dp_params,
)

from .helpers import blobs, both_models


def _random_point(spec, seed):
    """Float64 parameters and data away from ReLU kinks, for finite differences."""
    rng = np.random.default_rng(seed)
    s = ModelSpec.from_dict(spec)
    params = rng.standard_normal(s.n_params) * 0.5
    X = rng.random((6, s.n_features))
    y = rng.integers(0, s.n_classes, 6)
    return params, X, y


@both_models
def test_per_example_gradients_match_finite_differences(spec):
    params, X, y = _random_point(spec, 0)
    G = per_example_gradients(params, spec, X, y)
    assert G.shape == (6, len(params))
    h = 1e-6
    numeric = np.empty_like(G)
    for j in range(len(params)):
        e = np.zeros_like(params)
        e[j] = h
        numeric[:, j] = (per_example_loss(params + e, spec, X, y) - per_example_loss(params - e, spec, X, y)) / (2 * h)
    np.testing.assert_allclose(G, numeric, atol=1e-6, rtol=1e-5)


@both_models
def test_ghost_norms_and_clipped_sum_equal_the_materialised_computation(spec):
    params, X, y = _random_point(spec, 1)
    G = per_example_gradients(params, spec, X, y)
    norms = np.linalg.norm(G, axis=1)
    C = float(np.median(norms))  # half the examples get clipped
    clipped = G * np.minimum(1.0, C / norms)[:, None]
    total, ghost_norms = clipped_gradient_sum(params, spec, X, y, C)
    np.testing.assert_allclose(ghost_norms, norms, rtol=1e-10)
    np.testing.assert_allclose(total, clipped.sum(axis=0), rtol=1e-10, atol=1e-12)


@both_models
def test_each_clipped_gradient_has_norm_at_most_C(spec):
    params, X, y = _random_point(spec, 2)
    C = 0.05
    assert np.all(np.linalg.norm(per_example_gradients(params, spec, X, y), axis=1) > C)
    for i in range(len(y)):
        # The clipped sum of a one-example batch is that example's clipped gradient.
        g, norm = clipped_gradient_sum(params, spec, X[i : i + 1], y[i : i + 1], C)
        assert norm[0] > C
        assert np.linalg.norm(g) <= C * (1 + 1e-9)
        assert np.linalg.norm(g) == pytest.approx(C, rel=1e-9)  # clipped, not zeroed


def test_noise_std_is_z_times_C_in_noisy_gradient():
    spec = {"kind": "mlp", "n_features": 30, "n_classes": 2, "hidden": [64]}
    params = init_params(spec, 0).astype(np.float64)
    X, y = blobs(32, 30, seed=0)
    C, z, expected = 3.0, 0.5, 16.0
    clean, _ = clipped_gradient_sum(params, spec, X, y, C)
    rng = np.random.default_rng(123)
    noise = np.concatenate(
        [noisy_gradient(params, spec, X, y, C=C, z=z, expected_batch=expected, rng=rng) * expected - clean for _ in range(20)]
    )
    assert noise.size > 40_000
    assert noise.std() == pytest.approx(z * C, rel=0.02)
    assert abs(noise.mean()) < 0.02 * z * C


def test_training_path_adds_noise_of_std_z_C_to_the_sum_and_divides_by_qN():
    # q = 1 makes the batch the whole set, so the clipped sum is known and the rest is noise.
    spec = {"kind": "mlp", "n_features": 30, "n_classes": 2, "hidden": [64]}
    params = init_params(spec, 0)
    X, y = blobs(40, 30, seed=1)
    C, z = 0.7, 1.3
    clean, _ = clipped_gradient_sum(params, spec, X, y, C)
    noise = []
    for seed in range(20):
        update, _ = train_round(params, spec, X, y, q=1.0, z=z, C=C, K=1, lr=1.0, seed=seed)
        noise.append(-update.astype(np.float64) * len(X) - clean)  # update = -(sum + noise) / (q N)
    noise = np.concatenate(noise)
    assert noise.std() == pytest.approx(z * C, rel=0.02)
    assert abs(noise.mean()) < 0.02 * z * C


def test_returned_parameters_are_the_ones_run(monkeypatch):
    spec = {"kind": "logreg", "n_features": 5, "n_classes": 2}
    X, y = blobs(200, 5, seed=2)
    params = init_params(spec, 0)
    calls = []

    def spy(n, q, rng):
        idx = poisson_sample(n, q, rng)
        calls.append((n, q, idx))
        return idx

    monkeypatch.setattr(dpsgd_module, "poisson_sample", spy)
    q, z, C, K, lr = 0.25, 1e-7, 0.3, 4, 0.5
    update, used = train_round(params, spec, X, y, q=q, z=z, C=C, K=K, lr=lr, seed=3)
    assert used == {"q": q, "z": z, "K": K, "C": C}
    assert len(calls) == K and all(n == 200 and qq == q for n, qq, _ in calls)
    # Replay the K steps by hand on the batches that were drawn (noise ~ 1e-7: negligible).
    expected = params.astype(np.float64)
    for _, _, idx in calls:
        g, _ = clipped_gradient_sum(expected, spec, X[idx], y[idx], C)
        expected = expected - lr * g / (q * len(X))  # expected batch q*N, not len(idx)
    assert len({len(idx) for _, _, idx in calls}) > 1  # batches really vary in size
    np.testing.assert_allclose(update, expected - params, atol=1e-5)


def test_momentum_accumulates_past_steps():
    spec = {"kind": "logreg", "n_features": 5, "n_classes": 2}
    X, y = blobs(100, 5, seed=4)
    params = init_params(spec, 0)
    C, lr, mu = 0.5, 0.1, 0.9
    update, _ = train_round(params, spec, X, y, q=1.0, z=1e-7, C=C, K=2, lr=lr, momentum=mu, seed=0)
    p = params.astype(np.float64)
    g1, _ = clipped_gradient_sum(p, spec, X, y, C)
    g1 /= len(X)
    p1 = p - lr * g1
    g2, _ = clipped_gradient_sum(p1, spec, X, y, C)
    g2 /= len(X)
    np.testing.assert_allclose(update, p1 - lr * (mu * g1 + g2) - p, atol=1e-5)


def test_poisson_sampling_includes_each_record_with_probability_q():
    rng = np.random.default_rng(0)
    n, q, rounds = 50, 0.2, 4000
    counts = np.zeros(n)
    sizes = []
    for _ in range(rounds):
        idx = poisson_sample(n, q, rng)
        assert len(np.unique(idx)) == len(idx)
        counts[idx] += 1
        sizes.append(len(idx))
    np.testing.assert_allclose(counts / rounds, q, atol=0.03)
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.1)  # binomial, not fixed


@pytest.mark.parametrize("kind,hidden", [("logreg", []), ("mlp", [16])])
def test_training_on_separable_data_reaches_high_accuracy(kind, hidden):
    spec = {"kind": kind, "n_features": 8, "n_classes": 2, "hidden": hidden}
    X, y = blobs(600, 8, seed=5)
    X_test, y_test = blobs(400, 8, seed=6)
    params = init_params(spec, 0)
    assert evaluate(params, spec, X_test, y_test) < 0.75
    update, _ = train_round(params, spec, X, y, q=0.1, z=1.0, C=1.0, K=60, lr=1.0, momentum=0.5, seed=0)
    assert evaluate(params + update, spec, X_test, y_test) >= 0.97


@both_models
def test_training_is_deterministic_under_seed(spec):
    X, y = blobs(100, 5, seed=7)
    y = y % 3
    params = init_params(spec, 0)
    kw = dict(q=0.2, z=1.0, C=1.0, K=5, lr=0.3, momentum=0.5)
    a, _ = train_round(params, spec, X, y, seed=11, **kw)
    b, _ = train_round(params, spec, X, y, seed=11, **kw)
    c, _ = train_round(params, spec, X, y, seed=12, **kw)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_input_parameters_are_not_modified():
    spec = {"kind": "logreg", "n_features": 5, "n_classes": 2}
    X, y = blobs(50, 5, seed=8)
    params = init_params(spec, 0) + 0.1
    before = params.copy()
    train_round(params, spec, X, y, q=0.5, z=1.0, C=1.0, K=3, lr=0.5, seed=0)
    assert np.array_equal(params, before)


@pytest.mark.parametrize(
    "name,value",
    [
        ("q", 0.0),
        ("q", -0.1),
        ("q", 1.01),
        ("q", float("nan")),
        ("q", "0.1x"),
        ("z", 0.0),
        ("z", -1.0),
        ("z", float("inf")),
        ("C", 0.0),
        ("C", -2.0),
        ("C", float("nan")),
        ("K", 0),
        ("K", -3),
        ("K", 2.5),
        ("K", True),
    ],
)
def test_parameters_that_break_the_accounting_are_refused(name, value):
    spec = {"kind": "logreg", "n_features": 5, "n_classes": 2}
    X, y = blobs(20, 5, seed=9)
    kw = {"q": 0.5, "z": 1.0, "C": 1.0, "K": 2}
    kw[name] = value
    with pytest.raises(DPParameterError) as info:
        train_round(init_params(spec, 0), spec, X, y, lr=0.1, seed=0, **kw)
    assert isinstance(info.value, ValueError)
    assert info.value.name == name
    assert str(info.value).startswith(f"invalid DP parameter {name}=")


def test_boundary_values_of_dp_parameters_are_accepted():
    assert validate_dp_params(q=1, z=1e-3, C=1e-3, K=np.int64(1)) == {"q": 1.0, "z": 1e-3, "K": 1, "C": 1e-3}
