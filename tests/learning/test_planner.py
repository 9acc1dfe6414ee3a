"""The planner's schedule fits every budget and bound it is given; the server optimisers and
the accuracy interval do what their docstrings say."""

import math

import numpy as np
import pytest

from federation.learning import DPParameterError, LearningError
from federation.learning.evaluation import EvaluationRelease, accuracy_interval, pooled_accuracy_interval
from federation.learning.planner import plan_epsilon, plan_schedule
from federation.learning.server import ServerOptimizer, server_step, state_from_bytes, state_to_bytes

BASE = dict(record_counts=[4000, 2500, 1500], n_features=8, n_classes=2, rounds=10, epsilons=[3.0, 3.0, 3.0], deltas=[1e-5] * 3)


@pytest.fixture(scope="module")
def plan():
    return plan_schedule(**BASE)


def test_the_plan_fits_every_budget_by_dp_accounting(plan):
    eps = plan_epsilon(plan.q, plan.noise_multiplier, plan.local_steps, plan.rounds, plan.eval_noise_multiplier, 1, 1e-5)
    assert eps <= 3.0
    assert eps > 2.5  # and does not waste it
    assert plan.explanation.count("\n") >= 3
    assert 0 < plan.q <= 1 and plan.local_steps >= 1 and plan.clip_norm > 0 and plan.learning_rate > 0
    assert plan.server_optimizer["kind"] == "adam"
    kwargs = plan.plan_kwargs()
    assert kwargs["sampling_rate"] == plan.q and kwargs["noise_multiplier"] == plan.noise_multiplier


@pytest.mark.parametrize("d, k", [(8, 2), (13, 3), (64, 10)])
def test_clip_norm_and_learning_rate_follow_the_documented_scale_rule(d, k):
    """C = CLIP_SHARE x a record's typical first gradient r sqrt(1 - 1/k), r = sqrt(1 + d/3),
    and lr = 1/(C r): a clipped step moves a typical logit by at most 1 (3 significant digits)."""
    from federation.learning import planner

    p = plan_schedule(**{**BASE, "n_features": d, "n_classes": k})
    r = math.sqrt(1 + d / 3)
    assert p.clip_norm == pytest.approx(planner.CLIP_SHARE * r * math.sqrt(1 - 1 / k), rel=5e-3)
    assert p.learning_rate * p.clip_norm * r == pytest.approx(1.0, rel=1e-2)


def test_the_tightest_dataset_budget_rules():
    loose = plan_schedule(**{**BASE, "epsilons": [8.0, 8.0, 8.0]})
    tight = plan_schedule(**{**BASE, "epsilons": [8.0, 8.0, 1.0]})
    assert tight.noise_multiplier > loose.noise_multiplier
    assert plan_epsilon(tight.q, tight.noise_multiplier, tight.local_steps, 10, tight.eval_noise_multiplier, 1, 1e-5) <= 1.0


def test_the_agreement_bounds_are_respected():
    p = plan_schedule(**BASE, min_noise_multiplier=5.0, max_clip_norm=0.2, max_epsilon_per_round=0.5)
    assert p.noise_multiplier >= 5.0 and p.clip_norm <= 0.2
    assert p.eval_noise_multiplier >= 5.0
    assert plan_epsilon(p.q, p.noise_multiplier, p.local_steps, 1, p.eval_noise_multiplier, 1, 1e-5) <= 0.5
    with pytest.raises(DPParameterError):
        plan_schedule(**BASE, max_delta=1e-6)


def test_an_unpayable_budget_is_refused():
    with pytest.raises(DPParameterError):
        plan_schedule(**{**BASE, "epsilons": [1e-4] * 3, "rounds": 1000})
    with pytest.raises(LearningError):
        plan_schedule(**{**BASE, "record_counts": [10, 1, 5]})


def test_evaluation_noise_is_sized_for_two_points_or_says_it_cannot():
    big = plan_schedule(**{**BASE, "record_counts": [200_000] * 3, "epsilons": [8.0] * 3})
    assert big.eval_half_width == pytest.approx(0.02, rel=0.1)
    small = plan_schedule(**{**BASE, "record_counts": [150] * 3})
    assert small.eval_half_width > 0.02 and any("evaluation" in w for w in small.warnings)
    assert "warning" in small.explanation
    none = plan_schedule(**BASE, eval_releases=0)
    assert none.eval_noise_multiplier is None


def test_server_momentum_and_adam_carry_state_across_rounds():
    x = np.zeros(3, dtype=np.float32)
    u = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    x1, s1 = server_step(x, u, ServerOptimizer("momentum", lr=1.0, beta1=0.5))
    x2, s2 = server_step(x1, u, ServerOptimizer("momentum", lr=1.0, beta1=0.5), state_from_bytes(state_to_bytes(s1)))
    np.testing.assert_allclose(x2, u + 1.5 * u)
    adam = ServerOptimizer("adam", lr=0.1, tau=1e-6)
    y, st = server_step(x, u, adam)
    np.testing.assert_allclose(y, 0.1 * np.sign(u) * (0.1 / math.sqrt(0.01)), rtol=1e-3)
    assert st.shape == (6,)
    z, none = server_step(x, u, ServerOptimizer())
    np.testing.assert_allclose(z, u) and none is None
    with pytest.raises(LearningError):
        server_step(x, u, adam, np.zeros(3, dtype=np.float32))
    with pytest.raises(LearningError):
        ServerOptimizer.from_dict({"kind": "sgd"})
    with pytest.raises(LearningError):
        ServerOptimizer.from_dict({"kind": "adam", "lr": float("nan")})


def test_accuracy_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(0)
    sigma, correct, total = 20.0, 800, 1000
    hits = 0
    for _ in range(2000):
        iv = accuracy_interval(correct + rng.normal(0, sigma), total + rng.normal(0, sigma), sigma, sampling=False)
        hits += iv.low <= 0.8 <= iv.high
    assert 0.93 <= hits / 2000 <= 0.97
    assert accuracy_interval(5, -3, 10.0) is None
    with pytest.raises(DPParameterError):
        accuracy_interval(5, 10, 0.0)


def test_small_noisy_partitions_get_a_wide_band_not_a_point():
    # The UI drew 0.65 -> 0.96 -> 1.00 -> 0.79 as exact: two counts of sigma 10 on ~40 records.
    releases = [EvaluationRelease(30 + 4.0, 40 - 3.0, 10.0), EvaluationRelease(35 - 6.0, 42 + 2.0, 10.0)]
    iv = pooled_accuracy_interval(releases)
    assert iv.high - iv.low > 0.3
    assert pooled_accuracy_interval([None]) is None
