"""Evaluation on a partner's held-out records, released only as Gaussian-noised counts.

Why: an accuracy computed on a partner's records is computed from partner data, so by the
privacy model it leaves the partner only as a DP release charged to the ledger, or not at
all. What is released, per partner and per evaluation:

* ``noisy_correct = #correct + N(0, sigma^2)``  (sensitivity 1: adding or removing one
  record changes the count of correct predictions by at most 1)
* ``noisy_total   = #records + N(0, sigma^2)``  (sensitivity 1)

i.e. two Gaussian mechanisms with noise multiplier ``sigma``. The accountant charges it as
``ComposedDpEvent([GaussianDpEvent(sigma)] * 2)`` — equivalently one
``GaussianDpEvent(sigma / sqrt(2))``, since the pair has L2 sensitivity sqrt(2) — on the
dataset the records belong to. ``evaluation_event_params`` returns exactly that.
``sigma=None`` disables the release (nothing is computed, nothing is charged).

The coordinator only ever sees noisy counts; ``combine_accuracy`` turns several partners'
releases into one accuracy, clamped to [0, 1] because noise can push the ratio outside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DPParameterError
from .models import ModelSpec, as_spec, check_labels, predict


@dataclass(frozen=True)
class EvaluationRelease:
    """What leaves the partner: two noisy counts and the noise multiplier that produced them."""

    noisy_correct: float
    noisy_total: float
    noise_multiplier: float

    def to_dict(self) -> dict[str, float]:
        return {
            "noisy_correct": self.noisy_correct,
            "noisy_total": self.noisy_total,
            "noise_multiplier": self.noise_multiplier,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationRelease:
        return cls(
            noisy_correct=float(data["noisy_correct"]),
            noisy_total=float(data["noisy_total"]),
            noise_multiplier=float(data["noise_multiplier"]),
        )


def _check_sigma(sigma: float) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise DPParameterError("sigma", sigma, "a finite number > 0") from None
    if isinstance(sigma, bool) or not math.isfinite(s) or s <= 0:
        raise DPParameterError("sigma", sigma, "a finite number > 0")
    return s


def evaluation_event_params(sigma: float) -> dict[str, Any]:
    """The DP event of one ``release_evaluation``: ``count`` Gaussian mechanisms of
    ``noise_multiplier`` sigma (sensitivity 1 each), composed."""
    return {"noise_multiplier": _check_sigma(sigma), "count": 2}


def release_evaluation(
    params: np.ndarray,
    model_spec: ModelSpec | Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    *,
    sigma: float | None,
    seed: int | None = None,
) -> tuple[EvaluationRelease | None, dict[str, Any] | None]:
    """Noisy correct and total counts of the model on ``(X, y)``; ``(release, event params)``.

    With ``sigma=None`` returns ``(None, None)``: evaluation is disabled and nothing is
    charged. ``seed`` as in ``train_round``: tests only, never chosen by the coordinator.
    """
    if sigma is None:
        return None, None
    event = evaluation_event_params(sigma)
    spec = as_spec(model_spec)
    y = check_labels(y, spec, len(X))
    correct = int(np.sum(predict(np.asarray(params), spec, X) == y)) if len(y) else 0
    noise = np.random.default_rng(seed).standard_normal(2) * event["noise_multiplier"]
    release = EvaluationRelease(
        noisy_correct=float(correct + noise[0]),
        noisy_total=float(len(y) + noise[1]),
        noise_multiplier=event["noise_multiplier"],
    )
    return release, event


def combine_accuracy(
    releases: Iterable[EvaluationRelease | Mapping[str, Any] | None],
) -> float | None:
    """Pooled accuracy sum(noisy_correct) / sum(noisy_total), clamped to [0, 1].

    Missing releases (``None``: a partner that dropped out or has evaluation disabled) are
    skipped. Returns ``None`` when nothing usable was released (no release, or a noisy total
    that is not positive, which happens when the true totals are tiny next to the noise).
    """
    correct = total = 0.0
    any_release = False
    for r in releases:
        if r is None:
            continue
        r = r if isinstance(r, EvaluationRelease) else EvaluationRelease.from_dict(r)
        correct += r.noisy_correct
        total += r.noisy_total
        any_release = True
    if not any_release or total <= 0:
        return None
    return min(1.0, max(0.0, correct / total))


@dataclass(frozen=True)
class AccuracyInterval:
    """A noisy accuracy with its approximate 95% interval (both clamped to [0, 1])."""

    accuracy: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "low": self.low, "high": self.high}


def accuracy_interval(
    correct_noisy: float, total_noisy: float, sigma: float, *, releases: int = 1, sampling: bool = True
) -> AccuracyInterval | None:
    """95% interval of ``correct_noisy / total_noisy`` when each of ``releases`` partners added
    N(0, sigma^2) to both of its counts (so each pooled count carries variance releases * sigma^2).

    Delta method for a ratio of two independent noisy counts around accuracy a on t records:
    Var(noise part) ~= releases * sigma^2 * (1 + a^2) / t^2. With ``sampling`` the binomial
    variance a (1 - a) / t of accuracy measured on t held-out records is added: the interval
    is then for the model's accuracy on the population those records come from, not just
    for these records. Returns None when the noisy total is not positive (nothing to say).
    """
    s = _check_sigma(sigma)
    if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
        raise DPParameterError("releases", releases, "an integer >= 1")
    t = float(total_noisy)
    if not math.isfinite(t) or t <= 0 or not math.isfinite(float(correct_noisy)):
        return None
    a_raw = float(correct_noisy) / t
    a = min(1.0, max(0.0, a_raw))
    var = releases * s * s * (1.0 + a * a) / (t * t)
    if sampling:
        var += a * (1.0 - a) / t
    h = 1.959964 * math.sqrt(var)
    return AccuracyInterval(accuracy=a, low=max(0.0, a_raw - h), high=min(1.0, a_raw + h))


def pooled_accuracy_interval(releases: Iterable[EvaluationRelease | Mapping[str, Any] | None]) -> AccuracyInterval | None:
    """``accuracy_interval`` of the pooled releases (the counts ``combine_accuracy`` sums);
    partners may use different sigmas: the pooled noise variance is their sum."""
    correct = total = var = 0.0
    n = 0
    for r in releases:
        if r is None:
            continue
        r = r if isinstance(r, EvaluationRelease) else EvaluationRelease.from_dict(r)
        correct += r.noisy_correct
        total += r.noisy_total
        var += r.noise_multiplier**2
        n += 1
    if n == 0:
        return None
    return accuracy_interval(correct, total, math.sqrt(var / n), releases=n)
