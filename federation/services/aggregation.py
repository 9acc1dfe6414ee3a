"""A round's new model: unmask the sum, FedAvg (or the plan's server optimiser), store it.

The slow work (`aggregate_compute`: unmasking and averaging) runs outside any lock, from the
stored protocol state, and is redone if its worker dies; `aggregate_store` writes the result
under the round's row lock that services/rounds.py holds (a compare-and-set on phase ==
aggregate, so a redelivered task writes it once). The lifecycle decides what follows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .. import secagg
from ..learning import QuantSpec, apply_update, combine_accuracy, init_params, secure_average
from ..learning.evaluation import pooled_accuracy_interval
from ..learning.server import ServerOptimizer, server_step, state_from_bytes, state_to_bytes
from ..models import ModelVersion, ProtocolMessage, RoundParticipant, RoundProtocol, TrainingPlan, TrainingRound
from .protocol import AGGREGATE, contributions_restore, protocol_server

# --- the model a plan trains ------------------------------------------------------------------


def params_sha256(params: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(params, dtype=np.float32).tobytes()).hexdigest()


def model_store(*, plan: TrainingPlan, version: int, params: np.ndarray, round=None, metrics=None, optimizer_state=None) -> ModelVersion:
    params = np.asarray(params, dtype=np.float32)
    return ModelVersion.objects.create(
        plan=plan, round=round, version=version, params=params.tobytes(), sha256=params_sha256(params), metrics=metrics or {},
        optimizer_state=state_to_bytes(optimizer_state),
    )


def server_apply(plan: TrainingPlan, base: ModelVersion, update: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The plan's server optimiser on the aggregate (post-processing of DP outputs: no privacy
    cost). Plain FedAvg (no server optimiser) is ``base + server_learning_rate * update``;
    otherwise the optimiser's state continues from the one stored with ``base``."""
    params = model_params(base)
    if not plan.server_optimizer:
        return apply_update(params, update, plan.server_learning_rate), None
    opt = ServerOptimizer.from_dict(plan.server_optimizer)
    return server_step(params, update, opt, state_from_bytes(base.optimizer_state))


def model_params(version: ModelVersion) -> np.ndarray:
    return np.frombuffer(bytes(version.params), dtype=np.float32).copy()


def latest_model(plan: TrainingPlan) -> ModelVersion:
    """The plan's current global model; version 0 (seeded from the plan id) if none yet."""
    latest = plan.model_versions.order_by("-version").first()
    if latest is None:
        latest = model_store(plan=plan, version=0, params=init_params(plan.model_spec, seed=plan.pk))
    return latest


# --- aggregating a round ----------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """What `aggregate_compute` found: `outcome` is "ready" (the new parameters below),
    "failed" (unmasking failed, `reason` says why) or "already aggregated"."""

    outcome: str
    reason: str = ""
    contributors: tuple = ()
    dropouts: tuple = ()
    update: np.ndarray | None = None
    params: np.ndarray | None = None
    optimizer_state: np.ndarray | None = None
    base_version: int = 0


def aggregate_compute(round: TrainingRound) -> Aggregate:
    """Unmask the sum, dequantise, FedAvg and apply the server optimiser, outside any lock,
    from the stored state of a round in phase aggregate."""
    protocol = RoundProtocol.objects.get(round=round)
    cfg = protocol.config
    server = protocol_server(protocol)
    try:
        contributions_restore(round, server)  # the unmask responses, read once
    except ValueError:
        # A redelivered task racing the one that just aggregated: that one deleted the
        # responses after the state was read here. Anything else is a real inconsistency.
        if TrainingRound.objects.filter(pk=round.pk, phase=AGGREGATE).exists():
            raise
        return Aggregate("already aggregated")
    try:
        result = server.finalize()
    except secagg.SecAggError as exc:
        return Aggregate("failed", reason=f"Unmasking failed: {exc}")
    plan = round.plan
    spec = QuantSpec(**cfg["quant"])
    update = secure_average(result.vector, spec, cfg["weights"], result.contributors)
    new_params, optimizer_state = server_apply(plan, plan.model_versions.get(version=cfg["model_version"]), update)
    return Aggregate(
        "ready",
        contributors=tuple(result.contributors),
        dropouts=tuple(result.dropouts),
        update=update,
        params=new_params,
        optimizer_state=optimizer_state,
        base_version=cfg["model_version"],
    )


def aggregate_store(*, round: TrainingRound, aggregate: Aggregate) -> ModelVersion:
    """Store the new global model of `round` (locked by the caller, still in phase aggregate),
    mark the unmasking's dropouts, drop the used-up responses and record the round's metrics."""
    plan = round.plan
    version = aggregate.base_version + 1
    while ModelVersion.objects.filter(plan=plan, version=version).exists():
        version += 1
    model = model_store(
        plan=plan,
        version=version,
        params=aggregate.params,
        round=round,
        metrics={"contributors": list(aggregate.contributors), "dropouts": list(aggregate.dropouts)},
        optimizer_state=aggregate.optimizer_state,
    )
    RoundParticipant.objects.filter(round=round, dataset__organisation__slug__in=aggregate.dropouts).update(status=RoundParticipant.Status.DROPPED)
    ProtocolMessage.objects.filter(round=round).delete()  # the unmask responses are used up
    round.metrics = {
        **round.metrics,
        "contributors": list(aggregate.contributors),
        "dropouts": list(aggregate.dropouts),
        "update_norm": float(np.linalg.norm(aggregate.update)),
        "model_sha256": params_sha256(aggregate.params),
    }
    round.save(update_fields=["metrics"])
    return model


def results_record(round: TrainingRound) -> float | None:
    """At completion (under the caller's lock): the pooled accuracy of the partners' noisy
    evaluations into the round's metrics (saved with the round), its active participants
    FINISHED. Returns the accuracy (None without evaluations)."""
    links = list(round.participant_links.all())
    releases = [link.metrics.get("evaluation") for link in links]
    accuracy = combine_accuracy(releases)
    interval = pooled_accuracy_interval(releases)  # 95%, from the noise sigma and the counts
    round.metrics = {
        **round.metrics,
        "accuracy": accuracy,
        "accuracy_interval": [interval.low, interval.high] if interval is not None else None,
        "evaluations": sum("evaluation" in link.metrics for link in links),
    }
    RoundParticipant.objects.filter(round=round, status=RoundParticipant.Status.ACTIVE).update(status=RoundParticipant.Status.FINISHED)
    return accuracy
