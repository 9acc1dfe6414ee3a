"""The two calls the partner agent makes on its data: train a round, evaluate a model.

Why a separate module: the agent should not need to know how DP-SGD is put together; it
gets the global parameters and the plan's DP parameters from the coordinator, calls
``train_round``, and sends back the update together with exactly the (q, z, K, C) that were
run, which the coordinator compares with what it reserved on the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .dpsgd import dp_sgd
from .models import ModelSpec, as_spec, check_labels, predict


def train_round(
    params: np.ndarray,
    model_spec: ModelSpec | Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    q: float,
    z: float,
    C: float,
    K: int,
    lr: float,
    momentum: float = 0.0,
    seed: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """K local DP-SGD steps from the global ``params``.

    Returns ``(update, used)``: ``update`` is ``new_params - params`` as float32 (what goes,
    weighted and quantised, into secure aggregation) and ``used`` is
    ``{"q": float, "z": float, "K": int, "C": float}``, the parameters actually run; the
    round's DP event is ``SelfComposed(PoissonSampled(q, Gaussian(z)), K)``.

    ``seed=None`` (production) draws sampling and noise from OS entropy; a fixed seed makes
    the round reproducible and must never come from the coordinator (it would let the
    coordinator recompute the noise).
    """
    start = np.asarray(params, dtype=np.float32)
    new, used = dp_sgd(
        start,
        model_spec,
        X,
        y,
        q=q,
        z=z,
        C=C,
        K=K,
        lr=lr,
        momentum=momentum,
        rng=np.random.default_rng(seed),
    )
    return new - start, used


def evaluate(params: np.ndarray, model_spec: ModelSpec | Mapping[str, Any], X: np.ndarray, y: np.ndarray) -> float:
    """Plain accuracy in [0, 1]; NaN on an empty set.

    Not a DP release: use it on data the caller may see in the clear (the coordinator's
    public test file, a simulation). What leaves a partner goes through
    ``evaluation.release_evaluation``.
    """
    spec = as_spec(model_spec)
    y = check_labels(y, spec, len(X))
    if len(y) == 0:
        return float("nan")
    return float(np.mean(predict(np.asarray(params), spec, X) == y))
