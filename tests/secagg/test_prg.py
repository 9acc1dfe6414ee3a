"""The mask PRG: a cryptographic keystream keyed by the full 256-bit seed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from federation.secagg.prg import apply_masks, expand


def _flower_fold(seed: bytes) -> int:
    """What Flower's pseudo_rand_gen seeds MT19937 with: the XOR of the eight 32-bit words."""
    s = 0
    for i in range(0, 32, 4):
        s ^= int.from_bytes(seed[i : i + 4], "little")
    return s


def test_seeds_equal_in_their_folded_32_bits_give_different_streams():
    a = bytearray(os.urandom(32))
    b = bytearray(a)
    delta = os.urandom(4)
    for i in range(4):  # flip the same bits in words 0 and 5: the XOR fold cancels them
        b[i] ^= delta[i] | 1
        b[20 + i] ^= delta[i] | 1
    a, b = bytes(a), bytes(b)
    assert a != b and _flower_fold(a) == _flower_fold(b)
    assert not np.array_equal(expand(a, 1024), expand(b, 1024))
    assert np.count_nonzero(expand(a, 1024) == expand(b, 1024)) < 5


@pytest.mark.parametrize("position", range(32))
def test_the_stream_depends_on_every_byte_of_the_seed(position):
    seed = bytes(range(32))
    other = bytearray(seed)
    other[position] ^= 0x80
    assert not np.array_equal(expand(seed, 64), expand(bytes(other), 64))


def test_expand_is_deterministic_and_uint32():
    seed = os.urandom(32)
    m = expand(seed, 1000)
    assert m.dtype == np.uint32 and m.shape == (1000,)
    np.testing.assert_array_equal(m, expand(seed, 1000))
    np.testing.assert_array_equal(expand(seed, 10), m[:10])  # a prefix of the same stream


@pytest.mark.parametrize("d,chunk", [(1, 4), (37, 8), (1000, 64), (100_003, 1 << 15)])
def test_chunked_application_equals_whole_masks(d, chunk):
    rng = np.random.default_rng(d)
    x = rng.integers(0, 2**32, d, dtype=np.uint32)
    seeds = [(os.urandom(32), 1), (os.urandom(32), -1), (os.urandom(32), 1)]
    acc = x.copy()
    apply_masks(acc, seeds, chunk=chunk)
    expected = x.copy()
    for seed, sign in seeds:
        expected = expected + expand(seed, d) if sign == 1 else expected - expand(seed, d)
    np.testing.assert_array_equal(acc, expected)


def test_a_mask_added_and_subtracted_cancels_exactly():
    x = np.arange(5000, dtype=np.uint32)
    acc = x.copy()
    s = os.urandom(32)
    apply_masks(acc, [(s, 1)])
    assert not np.array_equal(acc, x)
    apply_masks(acc, [(s, -1)])
    np.testing.assert_array_equal(acc, x)


def test_apply_masks_refuses_a_non_uint32_accumulator_and_bad_signs():
    with pytest.raises(TypeError):
        apply_masks(np.zeros(4, np.int64), [(bytes(32), 1)])
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.uint32), [(bytes(32), 2)])
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.uint32), [(bytes(16), 1)])
