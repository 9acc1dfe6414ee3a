"""Writes for training plans."""

from __future__ import annotations

from django.db import transaction

from fedgov.errors import ValidationFailed

from .. import governance
from ..access import require_administrator
from ..learning import LearningError
from ..learning.server import ServerOptimizer
from ..models import Agreement, GovernanceEvent, TrainingPlan
from .common import event_record, field_error, validated

MSG_PURPOSE_NOT_PERMITTED = "Purpose {purpose!r} is not among the agreement's permitted purposes: {allowed}."
MSG_ONE_DATASET_PER_ORGANISATION = (
    "A plan takes at most one dataset per organisation (each is one party to secure aggregation): {duplicates}."
)


class DuplicateOrganisation(ValidationFailed):
    """Two datasets of one organisation in one plan: the organisation would be two parties of
    the secure-aggregation roster under one identity, which no round can start with."""

    code = "one_dataset_per_organisation"


MODEL_KINDS = ("logreg", "mlp")


def clean_model_spec(model_spec, *, n_features: int, n_classes: int) -> dict:
    if not isinstance(model_spec, dict) or model_spec.get("kind") not in MODEL_KINDS:
        raise field_error("model_spec", f"model_spec.kind must be one of {', '.join(MODEL_KINDS)}.")
    spec = {"kind": model_spec["kind"], "n_features": n_features, "n_classes": n_classes}
    if spec["kind"] == "mlp":
        hidden = model_spec.get("hidden", [32])
        if not isinstance(hidden, list) or not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= 4096 for h in hidden):
            raise field_error("model_spec", "model_spec.hidden must be a list of layer widths between 1 and 4096.")
        spec["hidden"] = hidden
    return spec


@transaction.atomic
def plan_create(
    *,
    actor,
    agreement: Agreement,
    name: str,
    purpose: str,
    datasets: list,
    model_spec: dict,
    noise_multiplier: float,
    clip_norm: float,
    rounds_total: int = 10,
    batch_size: int = 64,
    sampling_rate: float | None = None,
    local_steps: int = 10,
    learning_rate: float = 0.5,
    momentum: float = 0.0,
    server_learning_rate: float = 1.0,
    server_optimizer: dict | None = None,
    eval_noise_multiplier: float | None = None,
    secagg_threshold: int | None = None,
    phase_timeout_seconds: int = 120,
    feature_names: list[str] | None = None,
    label_name: str | None = None,
    label_classes: list | None = None,
) -> TrainingPlan:
    """Define a training plan. Its feature schema defaults to its first dataset's; governance
    later checks that every participating dataset declares it."""
    require_administrator(actor, what="training plan", action="create")
    datasets = list(datasets)
    if not datasets:
        raise field_error("datasets", "Choose at least one dataset.")
    several = governance.organisations_with_several(datasets)
    if several:
        message = MSG_ONE_DATASET_PER_ORGANISATION.format(
            duplicates="; ".join(f"{org} has {', '.join(slugs)}" for org, slugs in sorted(several.items()))
        )
        raise DuplicateOrganisation(message, fields={"datasets": [message]})
    foreign = [d.slug for d in datasets if d.agreement_id != agreement.pk]
    if foreign:
        raise field_error("datasets", f"Datasets {', '.join(foreign)} are not registered under '{agreement.title}'.")
    if purpose not in agreement.purposes:
        raise field_error("purpose", MSG_PURPOSE_NOT_PERMITTED.format(purpose=purpose, allowed="; ".join(agreement.purposes)))
    first = datasets[0]
    feature_names = feature_names if feature_names is not None else list(first.feature_names)
    label_name = label_name if label_name is not None else first.label_name
    label_classes = [str(c) for c in (label_classes if label_classes is not None else first.label_classes)]
    if noise_multiplier is None or noise_multiplier <= 0:
        raise field_error("noise_multiplier", "The noise multiplier must be greater than 0.")
    if clip_norm is None or clip_norm <= 0:
        raise field_error("clip_norm", "The clip norm must be greater than 0.")
    if sampling_rate is not None and not (0 < sampling_rate <= 1):
        raise field_error("sampling_rate", "The sampling rate must be in (0, 1], or empty to use the batch size.")
    if eval_noise_multiplier is not None and eval_noise_multiplier <= 0:
        raise field_error("eval_noise_multiplier", "The evaluation noise multiplier must be greater than 0, or empty to disable.")
    if secagg_threshold is not None and not (2 <= secagg_threshold <= len(datasets)):
        raise field_error("secagg_threshold", f"The threshold must be between 2 and the number of datasets ({len(datasets)}).")
    spec = clean_model_spec(model_spec, n_features=len(feature_names), n_classes=len(label_classes))
    try:
        server_optimizer = ServerOptimizer.from_dict(server_optimizer).to_dict() if server_optimizer else {}
    except LearningError as exc:
        raise field_error("server_optimizer", str(exc)) from exc
    plan = TrainingPlan(
        agreement=agreement,
        name=name,
        purpose=purpose,
        model_spec=spec,
        feature_names=feature_names,
        label_name=label_name,
        label_classes=label_classes,
        rounds_total=rounds_total,
        noise_multiplier=noise_multiplier,
        clip_norm=clip_norm,
        batch_size=batch_size,
        sampling_rate=sampling_rate,
        local_steps=local_steps,
        learning_rate=learning_rate,
        momentum=momentum,
        server_learning_rate=server_learning_rate,
        server_optimizer=server_optimizer,
        eval_noise_multiplier=eval_noise_multiplier,
        secagg_threshold=secagg_threshold,
        phase_timeout_seconds=phase_timeout_seconds,
        created_by=actor,
    )
    validated(plan)
    plan.save()
    plan.datasets.set(datasets)
    # The per-round privacy cost of every dataset is a pure function of the plan: compute it
    # now, after the commit (slow CPU work holds no lock), so that the curve store has it and
    # no process pays for it during a round's governance checks (accountant.use_curve_store).
    plan_id = plan.pk
    transaction.on_commit(lambda: plan_costs_precompute(plan_id=plan_id), robust=True)
    event_record(
        kind=GovernanceEvent.Kind.PLAN_CREATED,
        message=f"Plan '{name}' for '{purpose}' on {', '.join(d.slug for d in datasets)}: {rounds_total} rounds, z={noise_multiplier}, C={clip_norm}.",
        actor=actor,
        agreement=agreement,
    )
    return plan


def plan_costs_precompute(*, plan_id: int) -> dict[str, float]:
    """Each dataset's epsilon for one round of the plan, computed (and so stored for every
    process) ahead of the rounds; the governance checks recompute the same figure."""
    plan = TrainingPlan.objects.filter(pk=plan_id).first()
    if plan is None:
        return {}
    return {dataset.slug: governance.round_epsilon(plan, dataset) for dataset in plan.datasets.all()}


@transaction.atomic
def plan_stop(*, actor, plan: TrainingPlan, reason: str) -> TrainingPlan:
    plan = TrainingPlan.objects.select_for_update().get(pk=plan.pk)
    if plan.status != TrainingPlan.Status.ACTIVE:
        return plan
    plan.status = TrainingPlan.Status.STOPPED
    plan.stopped_reason = reason
    plan.save(update_fields=["status", "stopped_reason"])
    event_record(kind=GovernanceEvent.Kind.PLAN_STOPPED, message=f"Plan '{plan.name}' stopped: {reason}", actor=actor, agreement=plan.agreement)
    return plan
