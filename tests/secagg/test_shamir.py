"""Shamir t-of-n over GF(2^521 - 1): any t shares reconstruct, t - 1 do not determine the secret."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from federation.secagg import ReconstructionFailed, shamir
from federation.secagg.shamir import PRIME, LagrangeAtZero, reconstruct, split


def test_the_field_holds_every_32_byte_secret():
    assert PRIME == 2**521 - 1
    assert PRIME > 2**256
    secret = b"\xff" * 32
    assert reconstruct(dict(list(split(secret, threshold=2, xs=[1, 2, 3]).items())[:2]), threshold=2) == secret


@pytest.mark.parametrize("t,n", [(2, 3), (3, 5), (4, 7), (6, 10)])
def test_any_t_shares_reconstruct(t, n):
    secret = os.urandom(32)
    shares = split(secret, threshold=t, xs=range(1, n + 1))
    for subset in itertools.combinations(sorted(shares), t):
        assert reconstruct({x: shares[x] for x in subset}, threshold=t) == secret


def test_t_minus_one_shares_are_refused_rather_than_guessed():
    shares = split(os.urandom(32), threshold=3, xs=[1, 2, 3, 4])
    with pytest.raises(ReconstructionFailed):
        reconstruct({1: shares[1], 2: shares[2]}, threshold=3)


def _evaluate(points: dict[int, int], at: int) -> int:
    """The interpolating polynomial of ``points`` evaluated at ``at`` (independent of shamir.py)."""
    total = 0
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def test_t_minus_one_shares_do_not_determine_the_secret():
    t = 3
    secret = os.urandom(32)
    shares = split(secret, threshold=t, xs=[1, 2, 3, 4, 5])
    seen = {2: shares[2], 5: shares[5]}  # t - 1 shares
    # Interpolating them as if they were enough gives garbage, not the secret...
    assert LagrangeAtZero([2, 5]).interpolate(seen) != int.from_bytes(secret, "big")
    # ...and every candidate secret is consistent with them: completing the seen shares with
    # the third share a polynomial through (0, candidate) would give reconstructs the candidate.
    for candidate in (bytes(32), b"\x01" * 32, os.urandom(32)):
        third = _evaluate({0: int.from_bytes(candidate, "big"), **seen}, at=3)
        assert reconstruct({**seen, 3: third}, threshold=t) == candidate


def test_shares_are_fresh_and_uniform_even_for_a_fixed_secret():
    secret = bytes(32)
    first = [split(secret, threshold=2, xs=[1, 2])[1] for _ in range(400)]
    assert len(set(first)) == 400  # fresh randomness each time, never the secret itself
    assert 0 not in first
    # A degree-1 share of 0 is a*1 with a uniform in GF(p): its top bit is set about half the time.
    top = sum(y >> 520 for y in first)
    assert 140 < top < 260


def test_lagrange_coefficients_are_reused_for_every_secret_of_one_x_set():
    xs = [2, 3, 7]
    lag = LagrangeAtZero(xs)
    secrets = [os.urandom(32) for _ in range(20)]
    for s in secrets:
        shares = split(s, threshold=3, xs=[1, 2, 3, 4, 5, 6, 7])
        assert lag.secret({x: shares[x] for x in xs}) == s


def test_a_corrupted_share_is_caught_when_the_result_is_out_of_range():
    shares = split(os.urandom(32), threshold=2, xs=[1, 2, 3])
    bad = {1: shares[1], 2: (shares[2] + random.randrange(1, PRIME)) % PRIME}
    with pytest.raises(ReconstructionFailed):
        reconstruct(bad, threshold=2)  # fails unless the garbage lands below 2^256 (p ~ 2^-265)


def test_share_encoding_round_trips_and_refuses_non_field_elements():
    y = PRIME - 1
    assert shamir.share_from_bytes(shamir.share_to_bytes(y)) == y
    with pytest.raises(shamir.MalformedMessage):
        shamir.share_from_bytes((PRIME).to_bytes(66, "big"))
    with pytest.raises(shamir.MalformedMessage):
        shamir.share_from_bytes(b"\x00" * 65)


def test_split_refuses_bad_parameters():
    with pytest.raises(ValueError):
        split(b"short", threshold=2, xs=[1, 2])
    with pytest.raises(ValueError):
        split(bytes(32), threshold=3, xs=[1, 2])
    with pytest.raises(ValueError):
        split(bytes(32), threshold=2, xs=[0, 1])
