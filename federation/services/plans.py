"""Writes for training plans."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from fedgov.errors import InvalidState, ValidationFailed

from .. import governance
from ..access import require_administrator
from ..learning import LearningError
from ..learning.server import ServerOptimizer
from ..models import Agreement, GovernanceEvent, TrainingPlan, TrainingRound
from . import enqueue
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


#: The values the planner proposes (learning/planner.py, Plan.plan_kwargs()); the API and the
#: web form fill those left out from its proposal.
PLANNED_FIELDS = (
    "noise_multiplier", "clip_norm", "sampling_rate", "local_steps", "learning_rate", "momentum",
    "server_learning_rate", "server_optimizer", "eval_noise_multiplier",
)
MSG_PLAN_INVALID = "The plan breaks {count} rule(s) of the agreement or the datasets: {summary}"
MSG_PARTIAL_WARNING = (
    "warning: {dataset}: the remaining budget ({remaining:.3f}) covers {affordable} of the {rounds} rounds "
    "(the whole plan would spend {projected:.3f} of {budget:.3f}); later rounds will be blocked by the budget check."
)


class PlanErrors:
    """Every field error of a plan being defined, gathered so that all are reported at once."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        message = message if message.endswith(".") else message + "."
        if message not in self.fields.setdefault(field, []):
            self.fields[field].append(message)

    def has(self, *names: str) -> bool:
        return any(name in self.fields for name in names)

    def raise_if_any(self, error=ValidationFailed, **details) -> None:
        if not self.fields:
            return
        messages = [m for ms in self.fields.values() for m in ms]
        summary = " ".join(f"{name}: {' '.join(ms)}" for name, ms in self.fields.items())
        raise error(MSG_PLAN_INVALID.format(count=len(messages), summary=summary), fields=self.fields, **details)


@dataclass(frozen=True)
class PlanCheck:
    """A plan that passed every definition-time check, not yet saved."""

    plan: TrainingPlan
    datasets: list
    projection: list  # governance.PlanProjection per dataset
    warnings: list[str]


def plan_check(
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
    max_consecutive_failures: int = 3,
    retry_backoff_seconds: int = 30,
    feature_names: list[str] | None = None,
    label_name: str | None = None,
    label_classes: list | None = None,
    explanation: str = "",
    allow_partial: bool = False,
) -> PlanCheck:
    """Run every check a round request would run on this plan that can be known now (purpose,
    participants, one dataset per organisation, DP floor and ceilings, feature schema, the
    whole plan's epsilon against each dataset's remaining budget: governance.definition_problems)
    and raise ONE ValidationFailed naming every failing field. Saves nothing.

    A plan whose rounds the remaining budget cannot all cover is refused with the figures
    (it could never complete), unless `allow_partial`: then it is accepted with a warning in
    its explanation, and the rounds past the budget are blocked when requested."""
    require_administrator(actor, what="training plan", action="create")
    errors = PlanErrors()
    datasets = list(datasets)
    if not datasets:
        errors.add("datasets", "Choose at least one dataset.")
    several = governance.organisations_with_several(datasets)
    if several:
        errors.add(
            "datasets",
            MSG_ONE_DATASET_PER_ORGANISATION.format(
                duplicates="; ".join(f"{org} has {', '.join(slugs)}" for org, slugs in sorted(several.items()))
            ),
        )
    foreign = [d.slug for d in datasets if d.agreement_id != agreement.pk]
    if foreign:
        errors.add("datasets", f"Datasets {', '.join(foreign)} are not registered under '{agreement.title}'.")
    if purpose not in agreement.purposes:
        errors.add("purpose", MSG_PURPOSE_NOT_PERMITTED.format(purpose=purpose, allowed="; ".join(agreement.purposes)))
    first = datasets[0] if datasets else None
    feature_names = list(feature_names) if feature_names is not None else list(first.feature_names if first else [])
    label_name = label_name if label_name is not None else (first.label_name if first else "")
    label_classes = [str(c) for c in (label_classes if label_classes is not None else (first.label_classes if first else []))]
    if noise_multiplier is None or noise_multiplier <= 0:
        errors.add("noise_multiplier", "The noise multiplier must be greater than 0.")
    if clip_norm is None or clip_norm <= 0:
        errors.add("clip_norm", "The clip norm must be greater than 0.")
    if sampling_rate is not None and not (0 < sampling_rate <= 1):
        errors.add("sampling_rate", "The sampling rate must be in (0, 1], or empty to use the batch size.")
    if eval_noise_multiplier is not None and eval_noise_multiplier <= 0:
        errors.add("eval_noise_multiplier", "The evaluation noise multiplier must be greater than 0, or empty to disable.")
    if secagg_threshold is not None and not (2 <= secagg_threshold <= len(datasets)):
        errors.add("secagg_threshold", f"The threshold must be between 2 and the number of datasets ({len(datasets)}).")
    spec = None
    try:
        spec = clean_model_spec(model_spec, n_features=len(feature_names), n_classes=len(label_classes))
    except ValidationFailed as exc:
        for field, messages in exc.details["fields"].items():
            for message in messages:
                errors.add(field, message)
    try:
        clean_retry_policy(max_consecutive_failures, retry_backoff_seconds)
    except ValidationFailed as exc:
        for field, messages in exc.details["fields"].items():
            for message in messages:
                errors.add(field, message)
    try:
        server_optimizer = ServerOptimizer.from_dict(server_optimizer).to_dict() if server_optimizer else {}
    except LearningError as exc:
        errors.add("server_optimizer", str(exc))
    plan = TrainingPlan(
        agreement=agreement,
        name=name,
        purpose=purpose,
        model_spec=spec or {},
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
        server_optimizer=server_optimizer if isinstance(server_optimizer, dict) else {},
        eval_noise_multiplier=eval_noise_multiplier,
        secagg_threshold=secagg_threshold,
        phase_timeout_seconds=phase_timeout_seconds,
        explanation=explanation,
        max_consecutive_failures=max_consecutive_failures,
        retry_backoff_seconds=retry_backoff_seconds,
        created_by=actor,
    )
    try:
        validated(plan, exclude=(["model_spec"] if spec is None else []) + ([] if first else ["feature_names", "label_name", "label_classes"]))
    except ValidationFailed as exc:
        for field, messages in exc.details["fields"].items():
            for message in messages:
                errors.add(field, message)
    projection, warnings = [], []
    # The agreement's rules need computable DP parameters and datasets of this agreement.
    computable = not errors.has(
        "noise_multiplier", "clip_norm", "sampling_rate", "eval_noise_multiplier", "local_steps", "batch_size", "rounds_total"
    )
    if datasets and not foreign and computable:
        problems, projection = governance.definition_problems(plan, agreement, datasets)
        for field, message in problems:
            if (field == "rounds_total" and allow_partial) or (field == "purpose" and errors.has("purpose")):
                continue  # a partial plan is a warning; the purpose is reported once, above
            errors.add(field, message)
        if allow_partial:
            warnings = [
                MSG_PARTIAL_WARNING.format(
                    dataset=p.dataset, remaining=p.remaining, affordable=p.rounds_affordable, rounds=rounds_total,
                    projected=p.projected_spent, budget=p.budget,
                )
                for p in projection
                if not p.fits
            ]
    details = {"projection": [p.to_dict() for p in projection]}
    errors.raise_if_any(DuplicateOrganisation if several else ValidationFailed, **details)
    if warnings:
        plan.explanation = "\n".join([plan.explanation, *warnings]).strip()
    return PlanCheck(plan=plan, datasets=datasets, projection=projection, warnings=warnings)


@transaction.atomic
def plan_create(*, actor, **kwargs) -> TrainingPlan:
    """Define a training plan, after every definition-time check (plan_check: all failures
    at once). Its feature schema defaults to its first dataset's."""
    checked = plan_check(actor=actor, **kwargs)
    plan, datasets = checked.plan, checked.datasets
    plan.save()
    plan.datasets.set(datasets)
    # The per-round privacy cost of every dataset is a pure function of the plan: compute it
    # now, after the commit (slow CPU work holds no lock), so that the curve store has it and
    # no process pays for it during a round's governance checks (accountant.use_curve_store).
    plan_id = plan.pk
    transaction.on_commit(lambda: plan_costs_precompute(plan_id=plan_id), robust=True)
    event_record(
        kind=GovernanceEvent.Kind.PLAN_CREATED,
        message=(
            f"Plan '{plan.name}' for '{plan.purpose}' on {', '.join(d.slug for d in datasets)}: {plan.rounds_total} rounds, "
            f"z={plan.noise_multiplier}, C={plan.clip_norm}."
        ),
        actor=actor,
        agreement=plan.agreement,
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
    if plan.status not in (TrainingPlan.Status.ACTIVE, TrainingPlan.Status.PAUSED):
        return plan
    plan.status = TrainingPlan.Status.STOPPED
    plan.stopped_reason = reason
    plan.retry_at = None
    plan.save(update_fields=["status", "stopped_reason", "retry_at"])
    event_record(kind=GovernanceEvent.Kind.PLAN_STOPPED, message=f"Plan '{plan.name}' stopped: {reason}", actor=actor, agreement=plan.agreement)
    return plan


# --- the retry policy, pausing and resuming (ARCHITECTURE.md, Rounds) --------------------------

MSG_NOT_PAUSABLE = "Plan '{plan}' is {status}; only an active plan can be paused."
MSG_NOT_PAUSED = "Plan '{plan}' is {status}; only a paused plan can be resumed."
MSG_REASON_REQUIRED = "Say why you pause the plan."

#: Governance checks whose failure no waiting mends: the plan stops rather than pauses.
PERMANENT_CHECKS = (governance.BUDGET, governance.AGREEMENT_DATES)


def require_plan_steward(actor, plan: TrainingPlan, action: str) -> None:
    """An administrator, or a representative of an organisation with a dataset in the plan."""
    from ..access import is_administrator, is_representative_of, require_representative

    if is_administrator(actor):
        return
    organisations = [d.organisation for d in plan.datasets.select_related("organisation").order_by("id")]
    if any(is_representative_of(actor, org) for org in organisations):
        return
    require_representative(actor, organisation=organisations[0], agreement=plan.agreement, action=action)


def clean_retry_policy(max_consecutive_failures, retry_backoff_seconds) -> None:
    if max_consecutive_failures is not None and not (1 <= max_consecutive_failures <= 1000):
        raise field_error("max_consecutive_failures", "The limit of failed tries in a row must be between 1 and 1000.")
    if retry_backoff_seconds is not None and not (0 <= retry_backoff_seconds <= 86_400):
        raise field_error("retry_backoff_seconds", "The retry backoff must be between 0 and 86400 seconds.")


def _pause(plan: TrainingPlan, *, actor, reason: str) -> TrainingPlan:
    from django.utils import timezone

    plan.status = TrainingPlan.Status.PAUSED
    plan.stopped_reason = reason
    plan.paused_at = timezone.now()
    plan.retry_at = None
    plan.save(update_fields=["status", "stopped_reason", "paused_at", "retry_at"])
    event_record(kind=GovernanceEvent.Kind.PLAN_PAUSED, message=f"Plan '{plan.name}' paused: {reason}", actor=actor, agreement=plan.agreement)
    return plan


@transaction.atomic
def plan_pause(*, actor, plan: TrainingPlan, reason: str) -> TrainingPlan:
    """Pause an active plan: no next round (or retry) is requested until it is resumed. A
    round already live runs to its end."""
    require_plan_steward(actor, plan, "pause this plan")
    reason = (reason or "").strip()
    if not reason:
        raise field_error("reason", MSG_REASON_REQUIRED)
    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=plan.pk)
    if plan.status != TrainingPlan.Status.ACTIVE:
        raise InvalidState(MSG_NOT_PAUSABLE.format(plan=plan.name, status=plan.get_status_display().lower()))
    name = getattr(actor, "username", "") or "someone"
    return _pause(plan, actor=actor, reason=f"Paused by {name}: {reason}")


def plan_reactivate(*, actor, plan: TrainingPlan) -> TrainingPlan:
    """PAUSED -> ACTIVE under the caller's transaction, the count of failed tries starting
    again from 0 (services.rounds.plan_resume then requests the next round)."""
    require_plan_steward(actor, plan, "resume this plan")
    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=plan.pk)
    if plan.status != TrainingPlan.Status.PAUSED:
        raise InvalidState(MSG_NOT_PAUSED.format(plan=plan.name, status=plan.get_status_display().lower()))
    was = plan.stopped_reason
    plan.status = TrainingPlan.Status.ACTIVE
    plan.stopped_reason = ""
    plan.paused_at = None
    plan.retry_at = None
    plan.consecutive_failures = 0
    plan.save(update_fields=["status", "stopped_reason", "paused_at", "retry_at", "consecutive_failures"])
    event_record(
        kind=GovernanceEvent.Kind.PLAN_RESUMED, message=f"Plan '{plan.name}' resumed (was paused: {was})", actor=actor, agreement=plan.agreement
    )
    return plan


def plan_complete_if_done(plan: TrainingPlan) -> bool:
    """ACTIVE -> COMPLETED (the caller holds the plan's lock) once all its rounds completed."""
    if plan.rounds.filter(status=TrainingRound.Status.COMPLETED).count() < plan.rounds_total:
        return False
    plan.status = TrainingPlan.Status.COMPLETED
    plan.stopped_reason = f"All {plan.rounds_total} rounds completed."
    plan.retry_at = None
    plan.save(update_fields=["status", "stopped_reason", "retry_at"])
    return True


@transaction.atomic
def plan_retry_policy_set(*, actor, plan: TrainingPlan, max_consecutive_failures: int | None = None, retry_backoff_seconds: int | None = None) -> TrainingPlan:
    """Change the retry policy (not a DP parameter: allowed while rounds run), recording who did."""
    require_plan_steward(actor, plan, "change this plan's retry policy")
    clean_retry_policy(max_consecutive_failures, retry_backoff_seconds)
    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=plan.pk)
    old = (plan.max_consecutive_failures, plan.retry_backoff_seconds)
    if max_consecutive_failures is not None:
        plan.max_consecutive_failures = max_consecutive_failures
    if retry_backoff_seconds is not None:
        plan.retry_backoff_seconds = retry_backoff_seconds
    new = (plan.max_consecutive_failures, plan.retry_backoff_seconds)
    if new != old:
        plan.save(update_fields=["max_consecutive_failures", "retry_backoff_seconds"])
        event_record(
            kind=GovernanceEvent.Kind.PLAN_POLICY_CHANGED,
            message=f"Plan '{plan.name}' retry policy: pause after {new[0]} failed tries in a row (was {old[0]}), "
            f"retry after {new[1]}s (was {old[1]}s).",
            actor=actor,
            agreement=plan.agreement,
        )
    return plan


def plan_round_failed(*, round: TrainingRound, retryable: bool, actor=None) -> None:
    """After a try ended without completing (under the caller's transaction): schedule the
    next try after the backoff, or pause the plan saying why. Retryable: aborted for dropouts
    below the threshold or a missed deadline. Anything else (an error while unmasking, an
    abort by hand) pauses at once: a person looks before more budget is spent."""
    from datetime import timedelta

    from django.utils import timezone

    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=round.plan_id)
    if plan.status != TrainingPlan.Status.ACTIVE:
        return
    plan.consecutive_failures += 1
    what = f"round {round.number} {round.get_status_display().lower()}: {round.reason}"
    if not retryable:
        plan.save(update_fields=["consecutive_failures"])
        _pause(plan, actor=actor, reason=f"Not retried automatically; {what}")
        return
    if plan.consecutive_failures >= plan.max_consecutive_failures:
        plan.save(update_fields=["consecutive_failures"])
        _pause(plan, actor=actor, reason=f"{plan.consecutive_failures} tries in a row failed; the last, {what}")
        return
    plan.retry_at = timezone.now() + timedelta(seconds=plan.retry_backoff_seconds)
    plan.save(update_fields=["consecutive_failures", "retry_at"])
    event_record(
        kind=GovernanceEvent.Kind.PLAN_RETRY_SCHEDULED,
        message=f"Plan '{plan.name}': {what}. Try {plan.consecutive_failures + 1} requested in {plan.retry_backoff_seconds}s "
        f"(paused after {plan.max_consecutive_failures} failed tries in a row).",
        actor=actor,
        agreement=plan.agreement,
        round=round,
    )
    enqueue.after_commit(enqueue.PLAN_RETRY, plan.pk, countdown=plan.retry_backoff_seconds)


def plan_blocked(*, plan: TrainingPlan, round: TrainingRound, permanent: bool = False) -> None:
    """A round of the plan was blocked and the plan cannot go on without it: stop the plan if
    waiting mends nothing (budget exhausted, agreement over), otherwise pause it (an approval
    missing, a party suspended, too few participants); either way saying why."""
    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=plan.pk)
    if plan.status != TrainingPlan.Status.ACTIVE:
        return
    failed = {c["name"] for c in (round.governance_report or {}).get("checks", []) if not c.get("passed")}
    agreement_over = plan.agreement.status in (Agreement.Status.TERMINATED, Agreement.Status.EXPIRED)
    reason = f"Round {round.number} blocked: {round.reason}"
    if permanent or failed & set(PERMANENT_CHECKS) or agreement_over:
        plan_stop(actor=None, plan=plan, reason=reason)
    else:
        _pause(plan, actor=None, reason=reason)
