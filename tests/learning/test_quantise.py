import numpy as np
import pytest

from federation.learning import QuantisationError, QuantSpec, dequantise_sum, modular_sum, quantise, rounding_bound


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 100])
def test_quantise_sum_mod_2_32_dequantise_is_within_the_rounding_bound(n):
    spec = QuantSpec(clip=0.5, n_parties=n)
    rng = np.random.default_rng(n)
    xs = rng.uniform(-0.5, 0.5, size=(n, 2000))
    xs[:, :10] = 0.5  # extremes: the sum must not wrap even when everyone sends the maximum
    xs[:, 10:20] = -0.5
    total = modular_sum(quantise(x, spec, rng) for x in xs)
    assert total.dtype == np.uint32
    err = np.abs(dequantise_sum(total, spec, n) - xs.sum(axis=0))
    assert err.max() <= rounding_bound(spec, n)
    np.testing.assert_allclose(dequantise_sum(total, spec, n)[:20], np.repeat([0.5 * n, -0.5 * n], 10), atol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 100, 1000, 4096, 4097])
def test_bit_width_leaves_headroom_for_n_parties(n):
    spec = QuantSpec(clip=1.0, n_parties=n)
    assert n * spec.max_level < 2**32
    assert 2 * n * spec.max_level >= 2**32  # and no more headroom than needed (precision)


def test_fewer_summands_than_parties_dequantise_with_their_own_offset():
    spec = QuantSpec(clip=2.0, n_parties=10)
    rng = np.random.default_rng(0)
    xs = rng.uniform(-2, 2, size=(4, 100))  # 4 survivors of 10
    total = modular_sum(quantise(x, spec, rng) for x in xs)
    assert np.abs(dequantise_sum(total, spec, 4) - xs.sum(0)).max() <= spec.rounding_bound(4)


def test_values_outside_the_clip_range_are_clipped():
    spec = QuantSpec(clip=1.0, n_parties=2)
    q = quantise(np.array([5.0, -5.0, 0.25]), spec, np.random.default_rng(0))
    np.testing.assert_allclose(dequantise_sum(q, spec, 1), [1.0, -1.0, 0.25], atol=spec.rounding_bound(1))


def test_rounding_is_stochastic_and_unbiased():
    spec = QuantSpec(clip=1.0, n_parties=1, modulus_bits=8)  # coarse: 255 levels over [-1, 1]
    step = 1 / spec.scale
    x = np.full(20000, -1.0 + 10.3 * step)  # 30% of the way between two levels
    q = quantise(x, spec, np.random.default_rng(0))
    assert set(np.unique(q).tolist()) == {10, 11}
    assert dequantise_sum(q, spec, 1).mean() == pytest.approx(x[0], abs=0.02 * step)


def test_quantisation_is_deterministic_under_a_seeded_generator():
    spec = QuantSpec(clip=1.0, n_parties=3)
    x = np.random.default_rng(0).uniform(-1, 1, 50)
    assert np.array_equal(quantise(x, spec, np.random.default_rng(5)), quantise(x, spec, np.random.default_rng(5)))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(clip=0, n_parties=3),
        dict(clip=float("nan"), n_parties=3),
        dict(clip=1, n_parties=0),
        dict(clip=1, n_parties=2**31),
        dict(clip=1, n_parties=3, modulus_bits=33),
    ],
)
def test_invalid_specs_are_refused(kwargs):
    with pytest.raises(QuantisationError):
        QuantSpec(**kwargs)


def test_dequantise_refuses_impossible_summand_counts_and_wrong_dtype():
    spec = QuantSpec(clip=1.0, n_parties=3)
    s = np.zeros(4, np.uint32)
    for bad in (0, 4):
        with pytest.raises(QuantisationError):
            dequantise_sum(s, spec, bad)
    with pytest.raises(QuantisationError):
        dequantise_sum(s.astype(np.int64), spec, 1)
    with pytest.raises(QuantisationError):
        quantise(np.array([np.nan]), spec)
