"""A DP-SGD + FedAvg schedule derived from public metadata only.

Why: the schedule used to be constants picked on replicas of one demo data set. A partner that
brings other data got whatever those constants gave. The planner instead derives every value
from what the coordinator may know without touching a record: records per dataset, features,
classes, model kind, rounds, every dataset's (epsilon, delta) budget and the agreement's
bounds (DP floor, ceilings), and the number of evaluation releases. Nothing here reads data,
so running it costs no privacy.

The rules, each from an argument rather than a score on some data set:

* Features are declared scaled into [-1, 1] (``Schema(centred=True)``), so a record has norm
  at most sqrt(d + 1) with its bias input, and about ``r = sqrt(1 + d/3)`` when features
  spread over their range. At the start of training the softmax cross-entropy gradient of a
  record is ``x (p - onehot)``, of norm about ``g0 = r * sqrt(1 - 1/k)``.
* Clip norm ``C = g0 / 2``: below the typical initial gradient, so clipping normalises the
  early steps (the signal is then C times a mean direction and the noise/signal ratio does
  not depend on C), yet not far below, so later gradients of misclassified records are not
  crushed. Capped by the agreement's max clip norm.
* Local learning rate ``lr = 1 / (C r)``: one step of a clipped gradient moves a typical
  record's logit by at most 1 (|dw . x| <= lr C r), the largest step that stays inside the
  region where the logistic loss is close to quadratic.
* Steps: the number of local steps K is such that one round runs about ``EPOCHS_PER_ROUND``
  passes over the smallest dataset, bounded by ``DRIFT_STEPS``: under label skew a partner's
  local optimum is far from the global one, and the distance its local model travels in a
  round (<= K lr C r in logit units) is what pulls the partners apart. With the update
  bounded, a server optimiser carries progress across rounds instead.
* Server optimiser: FedAdam (Reddi et al. 2021) on the aggregate, a per-coordinate step
  that does not depend on the scale of the update; its lr is a fraction of the largest local
  movement per round. Post-processing: no privacy cost.
* Sampling rate q: the noise added to one averaged step has norm about ``z C sqrt(p) / B``
  for expected batch B = q n_min and p parameters, against a signal of at most C. For every
  candidate q the noise multiplier z(q) is calibrated by dp-accounting so that all planned
  rounds (DP-SGD and evaluation releases) fit every dataset's budget and the agreement's
  per-round ceiling; the q with the smallest ``z(q) sqrt(p) / (q n_min)`` wins.
* Evaluation noise: pooled accuracy over P partners on t held-out records has a noise
  half-width of about ``1.96 sigma sqrt(2 P) / t``; sigma is chosen for +/- ``EVAL_HALF_WIDTH``
  unless that would spend more than ``EVAL_SHARE`` of the budget, in which case the interval
  is wider and the explanation says so.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import DPParameterError, LearningError

#: Clip norm as a share of a record's typical first gradient (``C = CLIP_SHARE * g0``).
CLIP_SHARE = 0.5
#: Passes over the smallest dataset per round (one local epoch).
EPOCHS_PER_ROUND = 1.0
#: At most this many local steps: a round's local movement is then <= DRIFT_STEPS logits.
DRIFT_STEPS = 10
#: At least this many local steps: fewer wastes the round (each round costs communication).
MIN_STEPS = 2
#: At least this many steps over the whole plan: a step moves a logit by <= 1 and a confident
#: prediction (p = 0.95) needs a logit of 3, reached along many directions: tens of steps.
MIN_TOTAL_STEPS = 60
#: Expected batches below this are too small to average clipped gradients over.
MIN_BATCH = 16
#: Target noise half-width of the pooled evaluation accuracy.
EVAL_HALF_WIDTH = 0.02
#: Largest share of the epsilon budget the evaluation releases may take.
EVAL_SHARE = 0.1
#: Spend at most this share of the budget, for rounding in the ledger's own accountant.
MARGIN = 0.97
#: Server Adam: beta1, beta2, tau (Reddi et al. 2021 defaults) and lr as a share of a round's
#: largest local movement per coordinate.
SERVER_BETAS = (0.9, 0.99)
SERVER_TAU = 1e-3
SERVER_LR_SHARE = 0.5

_Z_LO, _Z_HI = 0.05, 500.0


@dataclass(frozen=True)
class Plan:
    """A whole schedule. ``q`` is one sampling rate for every dataset."""

    q: float
    local_steps: int
    clip_norm: float
    learning_rate: float
    momentum: float
    noise_multiplier: float
    eval_noise_multiplier: float | None
    server_optimizer: dict
    rounds: int
    expected_batch: float
    epsilon: dict[str, float]  # dataset key -> epsilon the plan spends at its delta
    eval_half_width: float | None
    explanation: str
    warnings: list[str] = field(default_factory=list)

    def plan_kwargs(self) -> dict:
        """Keyword arguments for ``plan_create`` (the coordinator's training plan)."""
        return {
            "sampling_rate": self.q,
            "local_steps": self.local_steps,
            "clip_norm": self.clip_norm,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "noise_multiplier": self.noise_multiplier,
            "eval_noise_multiplier": self.eval_noise_multiplier,
            "server_learning_rate": 1.0,
            "server_optimizer": dict(self.server_optimizer),
        }


def _events(q: float, z: float, K: int, rounds: int, eval_sigma: float | None, eval_releases: int):
    import dp_accounting

    train = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), K)
    parts = [train]
    if eval_sigma:
        parts += [dp_accounting.GaussianDpEvent(eval_sigma)] * (2 * eval_releases)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.ComposedDpEvent(parts), rounds)


@functools.lru_cache(maxsize=4096)
def plan_epsilon(q: float, z: float, K: int, rounds: int, eval_sigma: float | None, eval_releases: int, delta: float) -> float:
    """Epsilon of ``rounds`` rounds at ``delta`` by dp-accounting's RDP accountant."""
    from dp_accounting import rdp

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's convergence chatter
    acc = rdp.RdpAccountant()
    acc.compose(_events(q, z, K, rounds, eval_sigma, eval_releases))
    return float(acc.get_epsilon(delta))


def calibrate(cost, target: float) -> float | None:
    """Smallest z (to 0.5%) with cost(z) <= target, or None if even z = 500 costs more."""
    if cost(_Z_HI) > target:
        return None
    lo, hi = _Z_LO, _Z_HI
    if cost(lo) <= target:
        return lo
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if cost(mid) <= target else (mid, hi)
    return hi


def _n_params(d: int, k: int, hidden: Sequence[int]) -> int:
    sizes = [d, *hidden, k]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def plan_schedule(
    *,
    record_counts: Sequence[int],
    n_features: int,
    n_classes: int,
    rounds: int,
    epsilons: Sequence[float],
    deltas: Sequence[float],
    model_kind: str = "logreg",
    hidden: Sequence[int] = (),
    min_noise_multiplier: float | None = None,
    max_clip_norm: float | None = None,
    max_delta: float | None = None,
    max_epsilon_per_round: float | None = None,
    eval_releases: int = 1,
    eval_fraction: float = 0.2,
    eval_half_width: float = EVAL_HALF_WIDTH,
) -> Plan:
    """The schedule for these datasets (one entry per dataset in each sequence).

    ``record_counts`` are declared record counts (the partners train on ``1 - eval_fraction``
    of them and evaluate on the rest); ``eval_releases`` is the number of evaluation releases
    per round and dataset (0: no evaluation). Raises ``DPParameterError`` when no schedule fits.
    """
    counts = [int(n) for n in record_counts]
    if not counts or any(n < 2 for n in counts):
        raise LearningError(f"every dataset needs at least 2 records, got {counts}")
    if not (len(counts) == len(epsilons) == len(deltas)):
        raise LearningError("one epsilon and one delta per dataset")
    if rounds < 1 or n_features < 1 or n_classes < 2:
        raise LearningError("rounds >= 1, n_features >= 1 and n_classes >= 2 are needed")
    for e in epsilons:
        if not (math.isfinite(e) and e > 0):
            raise DPParameterError("epsilon", e, "a finite number > 0")
    for dl in deltas:
        if not 0 < dl < 1:
            raise DPParameterError("delta", dl, "a number in (0, 1)")
        if max_delta is not None and dl > max_delta:
            raise DPParameterError("delta", dl, f"at most the agreement's max delta {max_delta}")
    d, k = int(n_features), int(n_classes)
    hidden = tuple(int(h) for h in hidden) if model_kind == "mlp" else ()
    p = _n_params(d, k, hidden)
    warnings: list[str] = []
    why: list[str] = []

    # Scale: clip norm and learning rate from the normalised-feature argument.
    r = math.sqrt(1 + d / 3)
    g0 = r * math.sqrt(1 - 1 / k)
    C = CLIP_SHARE * g0
    if max_clip_norm is not None and C > max_clip_norm:
        C = float(max_clip_norm)
        warnings.append(f"clip norm capped at the agreement's maximum {max_clip_norm:g}")
    C = float(f"{C:.3g}")
    lr = float(f"{1 / (C * r):.3g}")
    why.append(
        f"features in [-1, 1]: a record's norm is about {r:.2f}, a first gradient about {g0:.2f}; "
        f"clip norm C = {C:g} (half of it), local lr = 1/(C x {r:.2f}) = {lr:g} so one step moves a typical logit by <= 1."
    )

    train_counts = [max(1, int(round(n * (1 - eval_fraction)))) for n in counts]
    n_min = min(train_counts)
    eval_total = sum(n - t for n, t in zip(counts, train_counts))
    P = len(counts)

    # Evaluation noise: sized for the target half-width, capped at EVAL_SHARE of the budget.
    eval_sigma: float | None = None
    half: float | None = None
    if eval_releases and eval_total > 0:
        want = eval_half_width * eval_total / (1.96 * math.sqrt(2 * P))
        affordable = max(_eval_sigma_for_share(e, dl, rounds, eval_releases) for e, dl in zip(epsilons, deltas))
        eval_sigma = max(want, affordable)
        if min_noise_multiplier is not None:
            eval_sigma = max(eval_sigma, float(min_noise_multiplier))
        eval_sigma = float(f"{eval_sigma:.3g}")
        half = 1.96 * eval_sigma * math.sqrt(2 * P) / eval_total
        if half > eval_half_width * 1.05:
            warnings.append(
                f"evaluation: {eval_total} held-out records cannot give +/-{100 * eval_half_width:.0f} points within "
                f"{100 * EVAL_SHARE:.0f}% of the budget; the interval is about +/-{100 * half:.1f} points"
            )
        why.append(f"evaluation noise sigma {eval_sigma:g} on {eval_total} held-out records: pooled accuracy +/-{100 * half:.1f} points (95%, noise only).")
    elif eval_releases:
        warnings.append("no held-out records: evaluation disabled")

    # Sampling rate, steps and noise: the candidate q with the least noise per averaged step.
    q_floor = min(1.0, MIN_BATCH / n_min)
    candidates = sorted({min(1.0, max(q_floor, q)) for q in (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)})
    best = None
    for q in candidates:
        K = int(min(DRIFT_STEPS, max(MIN_STEPS, math.ceil(EPOCHS_PER_ROUND / q), math.ceil(MIN_TOTAL_STEPS / rounds))))
        z = _calibrate_all(q, K, rounds, eval_sigma, eval_releases, epsilons, deltas, max_epsilon_per_round)
        if z is None:
            continue
        if min_noise_multiplier is not None:
            z = max(z, float(min_noise_multiplier))
        ratio = z * math.sqrt(p) / (q * n_min)
        if best is None or ratio < best[0] * 0.999:
            best = (ratio, q, K, z)
    if best is None:
        raise DPParameterError(
            "epsilon", min(epsilons), f"enough for {rounds} rounds (even a noise multiplier of {_Z_HI:g} does not fit; lower the rounds)"
        )
    ratio, q, K, z = best
    if ratio > 1:
        warnings.append(f"noise norm per averaged step is {ratio:.1f}x the signal: expect a large loss of accuracy; fewer rounds or more records help")
    why.append(
        f"sampling rate q = {q:g} (expected batch {q * n_min:.0f} on the smallest dataset of {n_min} training records), "
        f"K = {K} local steps (about {K * q:.2g} local epochs, at most {DRIFT_STEPS} to bound drift under label skew); "
        f"noise multiplier z = {z:.3g} calibrated by dp-accounting so {rounds} rounds fit every budget; noise/signal per step {ratio:.2f}."
    )
    server = {"kind": "adam", "lr": float(f"{SERVER_LR_SHARE * K * lr * C / r:.3g}"), "beta1": SERVER_BETAS[0], "beta2": SERVER_BETAS[1], "tau": SERVER_TAU}
    why.append(
        f"server: FedAdam lr {server['lr']:g} (half of a round's largest per-coordinate local movement), betas {SERVER_BETAS}, "
        "applied to the secure aggregate (post-processing, no privacy cost)."
    )
    spent = {
        str(i): plan_epsilon(q, z, K, rounds, eval_sigma, eval_releases, dl) for i, dl in enumerate(deltas)
    }
    return Plan(
        q=float(q), local_steps=K, clip_norm=C, learning_rate=lr, momentum=0.0, noise_multiplier=float(f"{z:.4g}") if z >= 1e-3 else z,
        eval_noise_multiplier=eval_sigma, server_optimizer=server, rounds=rounds, expected_batch=q * n_min, epsilon=spent,
        eval_half_width=half, explanation="\n".join(why + [f"warning: {w}" for w in warnings]), warnings=warnings,
    )


@functools.lru_cache(maxsize=256)
def _eval_sigma_for_share(epsilon: float, delta: float, rounds: int, releases: int) -> float:
    """Smallest evaluation sigma whose releases alone cost <= EVAL_SHARE * epsilon."""
    import dp_accounting
    from dp_accounting import rdp

    def cost(s):
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s), 2 * releases * rounds))
        return acc.get_epsilon(delta)

    s = calibrate(cost, EVAL_SHARE * epsilon)
    return _Z_HI if s is None else s


def _calibrate_all(q, K, rounds, eval_sigma, eval_releases, epsilons, deltas, max_epsilon_per_round):
    return _calibrate_all_cached(q, K, rounds, eval_sigma, eval_releases, tuple(sorted(set(zip(epsilons, deltas)))), max_epsilon_per_round)


# The calibration depends on the schedule and the budgets only, never on a record count, so
# plans for other datasets, splits or seeds with the same (q, K, rounds, budgets) reuse it.
@functools.lru_cache(maxsize=1024)
def _calibrate_all_cached(q, K, rounds, eval_sigma, eval_releases, budgets, max_epsilon_per_round):
    zs = []
    for e, dl in budgets:
        z = calibrate(lambda z, dl=dl: plan_epsilon(q, round(z, 6), K, rounds, eval_sigma, eval_releases, dl), MARGIN * e)
        if z is None:
            return None
        if max_epsilon_per_round is not None:
            z1 = calibrate(lambda z, dl=dl: plan_epsilon(q, round(z, 6), K, 1, eval_sigma, eval_releases, dl), MARGIN * max_epsilon_per_round)
            if z1 is None:
                return None
            z = max(z, z1)
        zs.append(z)
    return max(zs)
