"""Federated averaging, in the clear and through secure aggregation.

Why weights are applied by the partners: secure aggregation gives the coordinator only the
*sum* of the partners' vectors, never one partner's update, so the coordinator cannot
weight them after the fact. Weighted FedAvg is recovered by having partner i send
``w_i * update_i`` with ``w_i = n_i / sum_j n_j``, where the n are the datasets' *declared*
record counts (public metadata in the training plan, so using them costs no privacy). The
sum is then the weighted average. If some partners drop out, the sum holds only the
survivors' terms; dividing by the survivors' total weight renormalises it to the weighted
average over the survivors.

Partner side:      ``secagg_input(update, weight, qspec)`` -> uint32 vector to mask.
Coordinator side:  ``secure_average(sum_u32, qspec, weights, survivors)`` -> float update,
                   then ``apply_update(global, update, server_lr)``.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from .errors import LearningError
from .quantise import QuantSpec, dequantise_sum, quantise

K = TypeVar("K", bound=Hashable)


def _check_counts(counts: Sequence[int]) -> np.ndarray:
    arr = np.asarray(list(counts))
    if arr.size == 0:
        raise LearningError("no record counts to weight")
    if not np.issubdtype(arr.dtype, np.integer) or np.any(arr <= 0):
        raise LearningError(f"record counts must be positive integers, got {list(counts)}")
    return arr.astype(np.float64)


def fedavg_weights(record_counts: Mapping[K, int] | Sequence[int]) -> dict[K, float] | np.ndarray:
    """``w_i = n_i / sum(n)`` from declared record counts.

    A mapping (dataset slug -> count) gives a dict with the same keys; a sequence gives a
    float64 array in the same order.
    """
    if isinstance(record_counts, Mapping):
        keys = list(record_counts)
        w = _check_counts([record_counts[k] for k in keys])
        w /= w.sum()
        return {k: float(v) for k, v in zip(keys, w)}
    w = _check_counts(record_counts)
    return w / w.sum()


def weighted_average(updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """In-the-clear FedAvg (simulations, tests): ``sum_i w_i u_i / sum_i w_i``."""
    if len(updates) != len(weights) or not updates:
        raise LearningError("need one weight per update, and at least one update")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w <= 0):
        raise LearningError("weights must be positive")
    stacked = np.stack([np.asarray(u, dtype=np.float64) for u in updates])
    return (w @ stacked) / w.sum()


def secagg_input(update: np.ndarray, weight: float, spec: QuantSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Partner side: pre-weight the update by its public FedAvg weight and quantise it."""
    if not 0.0 < weight <= 1.0:
        raise LearningError(f"a FedAvg weight is in (0, 1], got {weight}")
    return quantise(np.asarray(update, dtype=np.float64) * weight, spec, rng)


def secure_average(
    masked_sum: np.ndarray,
    spec: QuantSpec,
    weights: Mapping[K, float],
    survivors: Collection[K],
) -> np.ndarray:
    """Coordinator side: the weighted average update of the survivors from their sum.

    ``weights`` are every planned partner's ``fedavg_weights``; ``survivors`` are the
    partners whose input is in ``masked_sum`` (the secure-aggregation output).
    """
    survivors = list(survivors)
    if not survivors:
        raise LearningError("no survivors: nothing was aggregated")
    if len(set(survivors)) != len(survivors):
        raise LearningError("survivors must be distinct")
    unknown = [s for s in survivors if s not in weights]
    if unknown:
        raise LearningError(f"survivors without a weight: {unknown}")
    total = sum(weights[s] for s in survivors)
    return dequantise_sum(masked_sum, spec, len(survivors)) / total


def apply_update(global_params: np.ndarray, aggregated_update: np.ndarray, server_lr: float = 1.0) -> np.ndarray:
    """New global parameters ``global + server_lr * update`` (float32, a new array)."""
    if not (np.isfinite(server_lr) and server_lr > 0):
        raise LearningError(f"server_lr must be a finite number > 0, got {server_lr}")
    g = np.asarray(global_params, dtype=np.float32)
    u = np.asarray(aggregated_update)
    if u.shape != g.shape:
        raise LearningError(f"update has shape {u.shape}, parameters {g.shape}")
    if not np.all(np.isfinite(u)):
        raise LearningError("aggregated update has NaN or infinite entries")
    return (g + np.float32(server_lr) * u.astype(np.float32)).astype(np.float32)
