"""The planner's proposal for a plan: its whole DP-SGD and FedAvg schedule from public
metadata only, cached per inputs; and a plan's fields filled from it."""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from django.core.cache import cache

from .. import governance
from ..learning import DPParameterError, LearningError, planner
from ..learning.planner import plan_schedule
from ..models import Agreement, TrainingPlan
from .common import field_error
from .plan_checks import MODEL_KINDS, PLANNED_FIELDS


@dataclass(frozen=True)
class Proposal:
    values: dict  # PLANNED_FIELDS -> value
    explanation: str
    warnings: list[str]


@functools.lru_cache(maxsize=256)
def _proposal(key: tuple) -> Proposal:
    # Keyed by every public input of the planner, so a cached answer is the planner's answer
    # (the planner reads no data and takes seconds: ARCHITECTURE.md's public-metadata rule).
    (counts, n_features, n_classes, rounds, epsilons, deltas, kind, hidden, floor, clip, max_delta, per_round) = key
    plan = plan_schedule(
        record_counts=counts, n_features=n_features, n_classes=n_classes, rounds=rounds, epsilons=epsilons, deltas=deltas,
        model_kind=kind, hidden=hidden, min_noise_multiplier=floor, max_clip_norm=clip, max_delta=max_delta,
        max_epsilon_per_round=per_round, eval_releases=1,
    )
    return Proposal(values=plan.plan_kwargs(), explanation=plan.explanation, warnings=list(plan.warnings))


#: How long a proposal stays in the shared cache. It is a pure function of its key and of the
#: planner's code (both in the cache key), so the limit only bounds the cache's size.
SHARED_SECONDS = 24 * 3600


@functools.cache
def _planner_version() -> str:
    """The planner's source and dp-accounting's version: a proposal another process cached
    under other rules (a deployment mid-upgrade) is never served."""
    source = Path(planner.__file__).read_bytes() + metadata.version("dp-accounting").encode()
    return hashlib.sha256(source).hexdigest()[:16]


def _shared_proposal(key: tuple) -> Proposal:
    """`_proposal(key)`, through Django's cache (Redis in production): the planner takes
    seconds, and every web process would otherwise run it again for the same plan form."""
    name = "plan-proposal:" + hashlib.sha256(repr((_planner_version(), key)).encode()).hexdigest()
    hit = cache.get(name)
    if hit is not None:
        return Proposal(**hit)
    proposal = _proposal(key)
    cache.set(name, asdict(proposal), SHARED_SECONDS)
    return proposal


def plan_propose(*, agreement: Agreement, datasets: list, rounds_total: int, model_spec: dict | None = None) -> Proposal:
    """The planner's whole DP-SGD and FedAvg schedule for these datasets, from public metadata
    only (record counts, features, classes, each dataset's remaining budget and delta, the
    agreement's bounds, the rounds and the model kind). Cached per inputs, in the process and
    in the cache every process shares."""
    from accounting.selectors import datasets_budget_figures

    datasets = list(datasets)
    if not datasets:
        raise field_error("datasets", "Choose at least one dataset.")
    foreign = [d.slug for d in datasets if d.agreement_id != agreement.pk]
    if foreign:
        raise field_error("datasets", f"Datasets {', '.join(foreign)} are not registered under '{agreement.title}'.")
    model_spec = model_spec or {"kind": "logreg"}
    kind = model_spec.get("kind") if isinstance(model_spec, dict) else None
    if kind not in MODEL_KINDS:
        raise field_error("model_spec", f"model_spec.kind must be one of {', '.join(MODEL_KINDS)}.")
    hidden = tuple(model_spec.get("hidden") or (32,)) if kind == "mlp" else ()
    figures = datasets_budget_figures(datasets=datasets)
    empty = [d.slug for d in datasets if figures[d.pk].epsilon_remaining <= 0]
    if empty:
        raise field_error("datasets", f"No budget left on {', '.join(empty)}: nothing can be planned on it.")
    first = datasets[0]
    key = (
        tuple(int(d.record_count) for d in datasets),
        len(first.feature_names),
        len(first.label_classes),
        int(rounds_total),
        tuple(round(figures[d.pk].epsilon_remaining, 6) for d in datasets),
        tuple(float(d.delta) for d in datasets),
        kind,
        hidden,
        float(agreement.min_noise_multiplier),
        float(agreement.max_clip_norm),
        float(agreement.max_delta),
        float(agreement.max_epsilon_per_round),
    )
    try:
        proposal = _shared_proposal(key)
    except DPParameterError as exc:  # no noise fits the budgets over these rounds, or a delta over the ceiling
        raise field_error("rounds_total" if exc.name == "epsilon" else "datasets", f"The planner found no schedule: {exc}.") from exc
    except LearningError as exc:
        raise field_error("datasets", f"The planner found no schedule: {exc}.") from exc
    # The cached answer is shared: every caller gets its own copy to change.
    return Proposal(values=copy.deepcopy(proposal.values), explanation=proposal.explanation, warnings=list(proposal.warnings))


def plan_propose_with_projection(*, agreement: Agreement, datasets: list, rounds_total: int, model_spec: dict | None = None) -> dict:
    """The proposal, and what its whole plan would spend on each dataset against what is left."""
    datasets = list(datasets)
    proposal = plan_propose(agreement=agreement, datasets=datasets, rounds_total=rounds_total, model_spec=model_spec)
    values = proposal.values
    draft = TrainingPlan(
        rounds_total=rounds_total, noise_multiplier=values["noise_multiplier"], sampling_rate=values["sampling_rate"],
        local_steps=values["local_steps"], eval_noise_multiplier=values["eval_noise_multiplier"],
    )
    projection = governance.plan_projection(draft, datasets)
    return {
        "values": dict(values),
        "explanation": proposal.explanation,
        "warnings": list(proposal.warnings),
        "projection": [p.to_dict() for p in projection],
    }


def plan_fill(
    *, agreement: Agreement, datasets: list, rounds_total: int, model_spec: dict | None, given: dict, explain: bool = False
) -> tuple[dict, str]:
    """`given` with every PLANNED_FIELDS value it leaves out taken from the planner's proposal,
    and the explanation to store. The planner runs only if something is left out, or if
    `explain` (values that came from a proposal shown earlier: its explanation is kept, with
    the values changed since)."""
    missing = [name for name in PLANNED_FIELDS if name not in given]
    if not missing and not explain:
        return dict(given), ""
    proposal = plan_propose(agreement=agreement, datasets=datasets, rounds_total=rounds_total, model_spec=model_spec)
    filled = {**{name: proposal.values[name] for name in missing}, **given}
    overridden = [name for name in PLANNED_FIELDS if name in given and given[name] != proposal.values.get(name)]
    explanation = proposal.explanation
    if overridden:
        explanation += f"\nset by hand instead of the proposal: {', '.join(overridden)}."
    return filled, explanation
