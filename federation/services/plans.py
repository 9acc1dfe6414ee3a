"""Writes for training plans: create (after `plan_checks.plan_check`) and the lifecycle (stop,
pause, resume, retries). The planner's proposal is `proposals`."""

from __future__ import annotations

from django.db import transaction

from fedgov.errors import InvalidState

from .. import governance
from ..models import Agreement, GovernanceEvent, TrainingPlan, TrainingRound
from . import enqueue
from .common import event_record, field_error
from .plan_checks import clean_retry_policy, plan_check


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
