"""t-of-n Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1.

p is a Mersenne prime far above 2^256, so a 32-byte secret (a seed or an X25519 private
key) is one field element and nothing is folded or truncated. Shares are 66-byte
big-endian field elements; the x-coordinate of a share is the holder's position in the
round's sorted roster (1..n), so it never travels.

Reconstruction interpolates at 0 with Lagrange coefficients that depend only on the set
of x-coordinates: ``LagrangeAtZero`` computes them once (O(t^2) multiplications, t
inversions) and every secret of that set then costs t multiplications.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from .errors import MalformedMessage, ReconstructionFailed

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret`` for each x in ``xs``; any ``threshold`` of them reconstruct it.

    The polynomial's other coefficients are fresh uniform field elements, so any
    threshold - 1 shares are uniformly distributed whatever the secret is.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise ValueError("need 1 <= threshold <= number of shares")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("x-coordinates must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coefficients):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


class LagrangeAtZero:
    """Lagrange coefficients at 0 for one fixed set of x-coordinates, reused per secret."""

    def __init__(self, xs: Sequence[int]) -> None:
        xs = [int(x) for x in xs]
        if not xs or len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
            raise ValueError("x-coordinates must be distinct, non-zero field elements")
        self.xs = tuple(xs)
        coefficients = []
        for i, xi in enumerate(xs):
            num, den = 1, 1
            for j, xj in enumerate(xs):
                if i != j:
                    num = num * xj % PRIME
                    den = den * (xj - xi) % PRIME
            coefficients.append(num * pow(den, -1, PRIME) % PRIME)
        self.coefficients = tuple(coefficients)

    def interpolate(self, ys: Mapping[int, int]) -> int:
        """f(0) for the polynomial through (x, ys[x]) for the x of this set."""
        return sum(c * ys[x] for x, c in zip(self.xs, self.coefficients)) % PRIME

    def secret(self, ys: Mapping[int, int]) -> bytes:
        """Reconstruct a 32-byte secret; a value out of range means a bad share."""
        value = self.interpolate(ys)
        if value >> (8 * SECRET_BYTES):
            raise ReconstructionFailed("the interpolated value is not a 32-byte secret")
        return value.to_bytes(SECRET_BYTES, "big")


def reconstruct(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """Reconstruct from exactly ``threshold`` shares ({x: y}); fewer is an error, not a guess."""
    if len(shares) != threshold:
        raise ReconstructionFailed(f"need exactly {threshold} shares, got {len(shares)}")
    return LagrangeAtZero(sorted(shares)).secret(shares)


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise MalformedMessage(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise MalformedMessage("a share is not a field element")
    return y
