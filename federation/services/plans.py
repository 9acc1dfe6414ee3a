"""Writes for training plans: create (after `plan_checks.plan_check`), the planner's proposal,
and the lifecycle (stop, pause, resume, retries)."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

from django.db import transaction

from fedgov.errors import InvalidState

from .. import governance
from ..learning import DPParameterError, LearningError
from ..learning.planner import plan_schedule
from ..models import Agreement, GovernanceEvent, TrainingPlan, TrainingRound
from .common import event_record, field_error
from .plan_checks import MODEL_KINDS, PLANNED_FIELDS, clean_retry_policy, plan_check


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


# --- The planner's proposal ---------------------------------------------------------------


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


def plan_propose(*, agreement: Agreement, datasets: list, rounds_total: int, model_spec: dict | None = None) -> Proposal:
    """The planner's whole DP-SGD and FedAvg schedule for these datasets, from public metadata
    only (record counts, features, classes, each dataset's remaining budget and delta, the
    agreement's bounds, the rounds and the model kind). Cached per inputs."""
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
        proposal = _proposal(key)
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


@transaction.atomic
def plan_resume(*, actor, plan: TrainingPlan):
    """PAUSED -> ACTIVE, the count of failed tries starting again from 0, and the next round
    requested at once (it needs the same approvals and checks as any round). Returns the
    plan and that round (None when a round is still live); a round that blocks again
    pauses or stops the plan again, saying why."""
    from .orchestration import plan_continue

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
    if plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists():
        return plan, None
    nxt = plan_continue(plan=plan, actor=actor)
    plan.refresh_from_db()
    return plan, nxt


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
    from .. import tasks

    plan_id, countdown = plan.pk, plan.retry_backoff_seconds
    transaction.on_commit(lambda: tasks.plan_retry_task.apply_async((plan_id,), countdown=countdown))


@transaction.atomic
def plan_retry(*, plan_id: int, now=None) -> TrainingRound | None:
    """The retry task (and the beat sweep, if the task was lost): request the next try once
    the backoff is over. Idempotent: a second delivery finds retry_at cleared."""
    from django.utils import timezone

    from .orchestration import plan_continue

    plan = TrainingPlan.objects.select_for_update().filter(pk=plan_id).first()
    now = now or timezone.now()
    if plan is None or plan.status != TrainingPlan.Status.ACTIVE or plan.retry_at is None or plan.retry_at > now:
        return None
    plan.retry_at = None
    plan.save(update_fields=["retry_at"])
    return plan_continue(plan=plan)


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


def plans_sweep_retries(*, now=None) -> int:
    """Beat safety net: a retry whose countdown task was lost (Redis restarted) is enqueued
    again a few seconds after it fell due; the task itself is idempotent."""
    from .. import tasks

    n = 0
    for plan_id in plans_retry_overdue(now=now):
        tasks.plan_retry_task.delay(plan_id)
        n += 1
    return n


def plans_retry_overdue(*, now=None) -> list[int]:
    """Active plans whose retry fell due more than a few seconds ago and was not made."""
    from datetime import timedelta

    from django.utils import timezone

    now = now or timezone.now()
    return list(TrainingPlan.objects.filter(status=TrainingPlan.Status.ACTIVE, retry_at__lt=now - timedelta(seconds=5)).values_list("pk", flat=True))
