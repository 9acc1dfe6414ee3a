"""Fixed-point encoding of float updates for secure aggregation over uint32 mod 2^32.

Why: secure aggregation masks and sums integer vectors modulo 2^k (k = 32 here, uint32),
so each partner maps its float update to integers first, and the coordinator maps the
modular sum back. Two properties make the sum exact up to rounding:

* no wrap-around: each entry is an integer in [0, 2^bits - 1] with
  ``bits = modulus_bits - ceil(log2(n_parties))``, so the sum of up to ``n_parties``
  entries is below 2^modulus_bits and the sum mod 2^32 *is* the integer sum;
* unbiased rounding: x in [-clip, clip] is shifted to [0, 2 clip], scaled by
  ``scale = (2^bits - 1) / (2 clip)`` and rounded stochastically (up with probability
  equal to the fractional part), so each entry's error is < 1/scale and zero in
  expectation; for a sum of n entries the error is < n / scale (``rounding_bound``).

Values outside [-clip, clip] are clipped first; that is post-processing of a DP update and
costs no privacy, but biases the average, so choose ``clip`` above the updates' usual
magnitude. Dequantising needs the number of summands actually in the sum (the survivors),
because each contributed an offset of ``clip``.

The rounding randomness need not be secret for DP (the update is already private), but
like the DP-SGD noise it is drawn from OS entropy unless a test passes a generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .errors import QuantisationError

MAX_MODULUS_BITS = 32  # the secure-aggregation vectors are uint32
MIN_BITS = 2


@dataclass(frozen=True)
class QuantSpec:
    """Fixed-point parameters shared by every partner of a round and the coordinator."""

    clip: float
    n_parties: int
    modulus_bits: int = 32
    bits: int = field(init=False)
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        clip = float(self.clip)
        if not math.isfinite(clip) or clip <= 0:
            raise QuantisationError(f"clip must be a finite number > 0, got {self.clip!r}")
        if isinstance(self.n_parties, bool) or not isinstance(self.n_parties, (int, np.integer)) or self.n_parties < 1:
            raise QuantisationError(f"n_parties must be an integer >= 1, got {self.n_parties!r}")
        if not 1 <= self.modulus_bits <= MAX_MODULUS_BITS:
            raise QuantisationError(f"modulus_bits must be in [1, {MAX_MODULUS_BITS}], got {self.modulus_bits}")
        # Headroom so that n_parties * (2^bits - 1) < 2^modulus_bits: the sum never wraps.
        headroom = math.ceil(math.log2(self.n_parties)) if self.n_parties > 1 else 0
        bits = self.modulus_bits - headroom
        if bits < MIN_BITS:
            raise QuantisationError(f"{self.n_parties} parties leave only {bits} bits of a {self.modulus_bits}-bit modulus")
        object.__setattr__(self, "clip", clip)
        object.__setattr__(self, "n_parties", int(self.n_parties))
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "scale", (2**bits - 1) / (2.0 * clip))

    @property
    def max_level(self) -> int:
        return 2**self.bits - 1

    def rounding_bound(self, n_summed: int) -> float:
        """Strict bound on |dequantised sum - float sum of clipped inputs|, per entry."""
        return n_summed / self.scale

    def to_dict(self) -> dict[str, float | int]:
        return {"clip": self.clip, "n_parties": self.n_parties, "modulus_bits": self.modulus_bits}


def quantise(x: np.ndarray, spec: QuantSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Clip to [-clip, clip], shift, scale, round stochastically: a uint32 vector."""
    rng = np.random.default_rng() if rng is None else rng
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise QuantisationError("cannot quantise NaN or infinite values")
    y = (np.clip(x, -spec.clip, spec.clip) + spec.clip) * spec.scale
    floor = np.floor(y)
    levels = floor + (rng.random(y.shape) < (y - floor))
    # y <= max_level exactly in real arithmetic; guard the last ulp of float rounding.
    np.clip(levels, 0, spec.max_level, out=levels)
    return levels.astype(np.uint32)


def modular_sum(vectors: Iterable[np.ndarray], modulus_bits: int = 32) -> np.ndarray:
    """Sum of uint32 vectors mod 2^modulus_bits: what secure aggregation hands the coordinator."""
    total = None
    for v in vectors:
        v = np.asarray(v, dtype=np.uint32)
        total = v.copy() if total is None else total + v  # uint32 arithmetic wraps mod 2^32
    if total is None:
        raise QuantisationError("nothing to sum")
    if modulus_bits < 32:
        total &= np.uint32(2**modulus_bits - 1)
    return total


def dequantise_sum(s: np.ndarray, spec: QuantSpec, n_summed: int) -> np.ndarray:
    """Float sum of the ``n_summed`` clipped inputs from their modular sum (float64)."""
    if isinstance(n_summed, bool) or not isinstance(n_summed, (int, np.integer)) or not 1 <= n_summed <= spec.n_parties:
        raise QuantisationError(f"n_summed must be an integer in [1, {spec.n_parties}], got {n_summed!r}")
    s = np.asarray(s)
    if s.dtype != np.uint32:
        raise QuantisationError(f"a secure-aggregation sum is uint32, got {s.dtype}")
    return s.astype(np.float64) / spec.scale - n_summed * spec.clip


def rounding_bound(spec: QuantSpec, n_summed: int) -> float:
    """Module-level alias of ``QuantSpec.rounding_bound``."""
    return spec.rounding_bound(n_summed)
