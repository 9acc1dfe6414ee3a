"""DP-SGD (Abadi et al., 2016), vectorised over the batch, for the models in ``models``.

Why this shape: a round on dataset d is charged to d's ledger as the DP event
``SelfComposed(PoissonSampled(q, Gaussian(z)), K)``. That charge is correct only if the
training code does exactly what the event says, so this module does nothing else:

* Poisson sampling: each record joins a step's batch independently with probability q;
* the per-example gradient of each record's loss is clipped to L2 norm <= C;
* Gaussian noise of standard deviation z*C is added to the *sum* of clipped gradients
  (sensitivity C under adding or removing one record);
* the noisy sum is divided by the *expected* batch size q*N (a public-looking constant:
  dividing by the realised batch size would leak it);
* K such steps, then the update (new - old parameters) leaves the partner.

Anything done afterwards (momentum, the learning rate, clipping the update for
quantisation) is post-processing and costs no privacy.

Per-example gradients are never materialised on the training path. For a dense layer
``out = a @ W + b`` the per-example gradient is the outer product ``a_i delta_i^T`` (and
``delta_i`` for the bias), whose squared Frobenius norm is ``||a_i||^2 ||delta_i||^2`` —
the "ghost norm" trick (Goodfellow 2015; Li et al. 2022). So per-example norms cost one
row-wise dot product per layer, and the clipped sum is one matmul per layer:
``a^T (delta * clip_factor[:, None])``. ``per_example_gradients`` materialises them anyway,
for tests and for debugging.

Randomness: pass ``rng=None`` (the default of every caller in production) to draw from the
operating system's entropy. A seed is for tests and reproducible benchmarks only: whoever
knows the seed can regenerate the noise and subtract it, so the coordinator must never
choose it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import DPParameterError, LearningError
from .models import ModelSpec, as_spec, check_features, check_labels, check_params, layers

#: Norms below this are treated as zero when computing clip factors (avoids 0/0).
_TINY = 1e-12


def validate_dp_params(*, q: float, z: float, C: float, K: int) -> dict[str, Any]:
    """Check (q, z, C, K) against what the accountant can charge; return them normalised.

    The accounting is ``SelfComposed(PoissonSampled(q, Gaussian(z)), K)`` with clipping
    norm C, so: 0 < q <= 1, z > 0 (z = 0 is no privacy at all, which the accountant cannot
    represent as a finite epsilon), C > 0, K a positive integer. NaN and infinity fail.
    """
    q_f = _finite_float("q", q, "a number in (0, 1]")
    if not 0.0 < q_f <= 1.0:
        raise DPParameterError("q", q, "a number in (0, 1]")
    z_f = _finite_float("z", z, "a finite number > 0")
    if z_f <= 0.0:
        raise DPParameterError("z", z, "a finite number > 0")
    c_f = _finite_float("C", C, "a finite number > 0")
    if c_f <= 0.0:
        raise DPParameterError("C", C, "a finite number > 0")
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        # A float K (say 2.5) would be silently truncated by range(): refuse it instead.
        raise DPParameterError("K", K, "an integer >= 1")
    return {"q": q_f, "z": z_f, "K": int(K), "C": c_f}


def _finite_float(name: str, value: Any, requirement: str) -> float:
    if isinstance(value, bool):
        raise DPParameterError(name, value, requirement)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DPParameterError(name, value, requirement) from None
    if not math.isfinite(out):
        raise DPParameterError(name, value, requirement)
    return out


def poisson_sample(n: int, q: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a Poisson-sampled batch: each of ``n`` records in independently w.p. ``q``.

    Drawn as ``m ~ Binomial(n, q)`` then ``m`` distinct indices uniformly at random, which
    has exactly the same distribution as n independent coin flips but costs O(m), not O(n).
    """
    m = int(rng.binomial(n, q))
    if m == n:
        return np.arange(n)
    return rng.choice(n, size=m, replace=False, shuffle=False)


# --- the vectorised core -------------------------------------------------------------
def _forward_backward(net, X, y):
    """Inputs ``a_l`` and output gradients ``delta_l`` of every layer, for the whole batch.

    ``delta_l`` is d(loss_i)/d(pre-activation of layer l) for each example i (row).
    """
    acts = [X]
    h = X
    last = len(net) - 1
    for i, (W, b) in enumerate(net):
        h = h @ W
        h += b
        if i < last:
            np.maximum(h, 0, out=h)
            acts.append(h)
    # Softmax cross-entropy: dL/dlogits = softmax - onehot.
    h -= h.max(axis=1, keepdims=True)
    np.exp(h, out=h)
    h /= h.sum(axis=1, keepdims=True)
    h[np.arange(len(y)), y] -= 1.0
    deltas = [h] * len(net)
    for i in range(last, 0, -1):
        d = deltas[i] @ net[i][0].T
        d *= acts[i] > 0  # ReLU derivative
        deltas[i - 1] = d
    return acts, deltas


def _ghost_sq_norms(acts, deltas):
    """Per-example squared norm of the full gradient: sum_l (||a_l||^2 + 1) ||delta_l||^2."""
    sq = np.zeros(len(acts[0]), dtype=acts[0].dtype)
    for a, d in zip(acts, deltas):
        an = np.einsum("ij,ij->i", a, a)
        an += 1.0  # the bias's gradient is delta itself
        sq += an * np.einsum("ij,ij->i", d, d)
    return sq


def _clipped_sum_into(net, out_net, X, y, C):
    """Write sum_i clip_C(g_i) into ``out_net`` (views of a flat buffer); return ||g_i||."""
    acts, deltas = _forward_backward(net, X, y)
    norms = np.sqrt(_ghost_sq_norms(acts, deltas))
    factor = np.minimum(1.0, C / np.maximum(norms, _TINY)).astype(X.dtype, copy=False)
    for a, d, (gW, gb) in zip(acts, deltas, out_net):
        d *= factor[:, None]
        # np.dot, not np.matmul: matmul with ``out=`` on a transposed operand skips BLAS and
        # was most of the suite's training time (bench/quality.py --suite, pyinstrument).
        np.dot(a.T, d, out=gW)
        np.sum(d, axis=0, out=gb)
    return norms


def _prepare(params, spec, X, y):
    spec = as_spec(spec)
    params = np.asarray(params)
    check_params(params, spec)
    if params.dtype not in (np.float32, np.float64):
        raise LearningError(f"parameters must be float32 or float64, got {params.dtype}")
    X = check_features(X, spec, params.dtype)
    y = check_labels(y, spec, len(X))
    return spec, params, X, y


def clipped_gradient_sum(
    params: np.ndarray,
    spec: ModelSpec | Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    C: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum over the batch of per-example gradients each clipped to norm ``C``.

    Returns ``(sum as a flat vector in the params' layout and dtype, per-example
    unclipped gradient norms)``. No noise: this is the deterministic half of a step.
    """
    spec, params, X, y = _prepare(params, spec, X, y)
    out = np.empty_like(params)
    norms = _clipped_sum_into(layers(params, spec), layers(out, spec), X, y, params.dtype.type(C))
    return out, norms


def per_example_gradients(params: np.ndarray, spec: ModelSpec | Mapping[str, Any], X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Materialised per-example gradients, shape (batch, n_params), in the flat layout.

    For tests and debugging only (it costs batch x n_params memory); training uses the
    ghost-norm path, which this must agree with.
    """
    spec, params, X, y = _prepare(params, spec, X, y)
    acts, deltas = _forward_backward(layers(params, spec), X, y)
    parts = []
    for a, d in zip(acts, deltas):
        parts.append(np.einsum("bi,bj->bij", a, d).reshape(len(X), -1))
        parts.append(d)
    return np.concatenate(parts, axis=1)


def noisy_gradient(
    params: np.ndarray,
    spec: ModelSpec | Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    C: float,
    z: float,
    expected_batch: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One privatised gradient: (sum of clipped per-example grads + N(0, (zC)^2 I)) / expected_batch.

    ``X, y`` must be a Poisson-sampled batch (see ``poisson_sample``) for the accounting
    to hold, and ``expected_batch`` must be q*N, not the realised batch size.
    """
    g, _ = clipped_gradient_sum(params, spec, X, y, C)
    g += rng.standard_normal(g.shape[0], dtype=g.dtype) * g.dtype.type(z * C)
    g /= g.dtype.type(expected_batch)
    return g


def dp_sgd(
    params: np.ndarray,
    spec: ModelSpec | Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    q: float,
    z: float,
    C: float,
    K: int,
    lr: float,
    momentum: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run K DP-SGD steps from ``params``; return (new params, the DP parameters used).

    The returned dict ``{"q", "z", "K", "C"}`` is what was actually run, for the ledger.
    The input vector is not modified.
    """
    used = validate_dp_params(q=q, z=z, C=C, K=K)
    lr_f = _finite_float("lr", lr, "a finite number > 0")
    if lr_f <= 0:
        raise DPParameterError("lr", lr, "a finite number > 0")
    mom = _finite_float("momentum", momentum, "a number in [0, 1)")
    if not 0.0 <= mom < 1.0:
        raise DPParameterError("momentum", momentum, "a number in [0, 1)")
    spec, params, X, y = _prepare(params, spec, X, y)
    n = len(X)
    if n == 0:
        raise LearningError("cannot train on an empty dataset")
    rng = np.random.default_rng() if rng is None else rng

    dtype = params.dtype.type
    work = params.copy()
    grad = np.empty_like(work)
    net, grad_net = layers(work, spec), layers(grad, spec)
    velocity = np.zeros_like(work) if mom else None
    noise_std = dtype(used["z"] * used["C"])
    inv_batch = dtype(1.0 / (used["q"] * n))
    c = dtype(used["C"])
    for _ in range(used["K"]):
        idx = poisson_sample(n, used["q"], rng)
        _clipped_sum_into(net, grad_net, X[idx], y[idx], c)
        grad += rng.standard_normal(grad.shape[0], dtype=work.dtype) * noise_std
        grad *= inv_batch
        if velocity is not None:
            velocity *= dtype(mom)
            velocity += grad
            step = velocity
        else:
            step = grad
        work -= dtype(lr_f) * step
    return work, used
