"""The rules a training plan must meet when it is defined (ARCHITECTURE.md, Privacy model):
its model, its DP parameters within the agreement's bounds, at most one dataset per
organisation, the budget its rounds would spend. `plan_check` gathers every failure at once;
`services.plans.plan_create` saves a plan only after it."""

from __future__ import annotations

from dataclasses import dataclass

from fedgov.errors import ValidationFailed

from .. import governance
from ..access import require_administrator
from ..learning import LearningError
from ..learning.server import ServerOptimizer
from ..models import Agreement, TrainingPlan
from .common import field_error, validated

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


def clean_retry_policy(max_consecutive_failures, retry_backoff_seconds) -> None:
    if max_consecutive_failures is not None and not (1 <= max_consecutive_failures <= 1000):
        raise field_error("max_consecutive_failures", "The limit of failed tries in a row must be between 1 and 1000.")
    if retry_backoff_seconds is not None and not (0 <= retry_backoff_seconds <= 86_400):
        raise field_error("retry_backoff_seconds", "The retry backoff must be between 0 and 86400 seconds.")
