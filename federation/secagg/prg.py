"""Mask expansion: a 32-byte seed -> d uint32 words of AES-256-CTR keystream.

The whole 256-bit seed is the AES key (Flower folds its seeds to 32 bits for MT19937,
which leaves 2^32 possible masks). Every seed is used for exactly one stream (self-mask
seeds are fresh per round, pairwise seeds are derived with the round id bound), so the
fixed all-zero counter block never repeats under one key.

``apply_masks`` adds or subtracts many streams into one accumulator in cache-sized chunks:
one CTR context per seed stays open and each chunk of the accumulator is visited once per
seed while it is still in L2, instead of materialising d-word masks one after the other.
Peak extra memory is three chunk buffers, whatever d and the number of seeds.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_NONCE = bytes(16)
CHUNK_WORDS = 1 << 15  # 128 KiB of keystream per call: measured best on the bench machine
WORD = np.dtype("<u4")  # masks and masked vectors are little-endian uint32 on the wire


def _encryptor(seed: bytes):
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a PRG seed is {SEED_BYTES} bytes")
    return Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()


def expand(seed: bytes, d: int) -> np.ndarray:
    """The mask of ``seed``: d uint32 words (a fresh array)."""
    enc = _encryptor(seed)
    return np.frombuffer(enc.update(bytes(4 * d)) + enc.finalize(), dtype=WORD).astype(np.uint32)


def apply_masks(acc: np.ndarray, masks: Iterable[tuple[bytes, int]], *, chunk: int = CHUNK_WORDS) -> None:
    """In place: acc += sign * PRG(seed) mod 2^32 for each (seed, sign), sign in {+1, -1}."""
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise TypeError("acc must be a contiguous 1-D np.uint32 array")
    plus, minus = [], []
    for seed, sign in masks:
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        (plus if sign == 1 else minus).append(_encryptor(seed))
    d = acc.shape[0]
    if d == 0 or not (plus or minus):
        return
    chunk = min(chunk, d)
    zeros = memoryview(bytes(4 * chunk))
    out = bytearray(4 * chunk + 15)  # update_into wants block_size - 1 spare bytes
    stream = np.frombuffer(out, dtype=WORD, count=chunk)
    for start in range(0, d, chunk):
        m = min(chunk, d - start)
        segment = acc[start : start + m]
        src, words = zeros[: 4 * m], stream[:m]
        for enc in plus:
            enc.update_into(src, out)
            np.add(segment, words, out=segment)
        for enc in minus:
            enc.update_into(src, out)
            np.subtract(segment, words, out=segment)
