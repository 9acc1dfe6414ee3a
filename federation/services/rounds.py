"""Writes for training rounds: request, approvals, and the governance gate before a start.

State changes are compare-and-set under the round's row lock (ARCHITECTURE.md, Conventions 7): two approvals
arriving together, or a task delivered twice, move a round once.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from fedgov.errors import InvalidState, ValidationFailed

from .. import governance
from ..access import require_representative, require_round_requester
from ..i18n import in_english
from ..models import (
    AgreementParty,
    GovernanceEvent,
    Organisation,
    RoundApproval,
    RoundParticipant,
    StandingApproval,
    TrainingPlan,
    TrainingRound,
)
from .common import event_record, field_error

Status = TrainingRound.Status

MSG_PLAN_NOT_ACTIVE = "Plan '{plan}' is {status}: {reason}"
MSG_ROUND_LIVE = "Round {number} of '{plan}' is still {status}; one round of a plan runs at a time."
MSG_NOT_AWAITING = "Round {number} is {status}; approvals are only taken while a round awaits them."
MSG_ALREADY_DECIDED = "{organisation} already {decision}d round {number}."
MSG_NOT_INVOLVED = "{organisation} has no dataset in round {number}; only the organisations whose data it uses decide."
MSG_REASON_REQUIRED = "Say why you reject the round."
MSG_PLAN_COMPLETE = "Plan '{plan}' has run all of its {total} rounds."


def _on_commit_enqueue(task_name: str, round_id: int) -> None:
    """Enqueue after commit (ARCHITECTURE.md, Conventions 6): the task must never read an uncommitted row."""
    from .. import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(round_id))


def _set_status(round: TrainingRound, to: str, *, reason: str = "", **fields) -> None:
    round.status = to
    if reason:
        round.reason = reason
    if to in TrainingRound.FINAL_STATES:
        round.finished_at = timezone.now()
    for k, v in fields.items():
        setattr(round, k, v)
    round.save()


def eligible_datasets(plan: TrainingPlan):
    """The plan's datasets whose organisation is still an active party (not exited, no notice)."""
    links = {p.organisation_id: p for p in plan.agreement.party_links.all()}
    return [
        d
        for d in plan.datasets.select_related("organisation").order_by("id")
        if d.organisation_id in links and links[d.organisation_id].effective_status() == AgreementParty.Status.ACTIVE
    ]


@transaction.atomic
def round_request(*, actor, plan: TrainingPlan, idempotency_key: str = "", system: bool = False) -> TrainingRound:
    """Ask for the plan's next round. Returns the round, BLOCKED with its report when a
    governance check fails, otherwise AWAITING_APPROVAL (or APPROVED when standing approvals
    cover it). A repeated request with the same idempotency key returns the first round."""
    return round_request_once(actor=actor, plan=plan, idempotency_key=idempotency_key, system=system)[0]


@transaction.atomic
def round_request_once(
    *, actor, plan: TrainingPlan, idempotency_key: str = "", system: bool = False
) -> tuple[TrainingRound, bool]:
    """round_request, and whether this call created the round (True) or found the one an
    earlier request with the same idempotency key created (False): the API answers 201 or
    200. The plan's row lock is taken before the key is looked up, so two copies of one
    request arriving together see one create and the other find its round."""
    if not system:
        require_round_requester(actor, plan)
    # The plan row serialises requests: two clients asking at once get round n and a refusal,
    # never two rounds numbered n.
    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=plan.pk)
    if idempotency_key:
        if len(idempotency_key) > 128:
            raise field_error("idempotency_key", "An Idempotency-Key has at most 128 characters.")
        existing = TrainingRound.objects.filter(plan=plan, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    if plan.status != TrainingPlan.Status.ACTIVE:
        raise InvalidState(
            MSG_PLAN_NOT_ACTIVE.format(
                plan=plan.name, status=in_english(plan.get_status_display()).lower(), reason=plan.stopped_reason or "no reason recorded"
            )
        )
    live = plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).first()
    if live:
        raise InvalidState(MSG_ROUND_LIVE.format(number=live.number, plan=plan.name, status=in_english(live.get_status_display()).lower()))
    completed = plan.rounds.filter(status=Status.COMPLETED).count()
    if completed >= plan.rounds_total:
        raise InvalidState(MSG_PLAN_COMPLETE.format(plan=plan.name, total=plan.rounds_total))
    number = (plan.rounds.aggregate(n=Max("number"))["n"] or 0) + 1
    try:
        with transaction.atomic():
            round = TrainingRound.objects.create(
                plan=plan,
                number=number,
                requested_by=actor if getattr(actor, "pk", None) else None,
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        raise InvalidState(f"Round {number} of '{plan.name}' was requested concurrently; retry.") from None
    for dataset in eligible_datasets(plan):
        RoundParticipant.objects.create(round=round, dataset=dataset)
    report = governance.governance_report(round, stage=governance.STAGE_REQUEST)
    round.governance_report = report.to_dict()
    event_record(
        kind=GovernanceEvent.Kind.ROUND_REQUESTED,
        message=f"Round {number} of '{plan.name}' requested with {round.participants.count()} participants.",
        actor=actor,
        agreement=plan.agreement,
        round=round,
    )
    if not report.passed:
        _set_status(round, Status.BLOCKED, reason=report.summary())
        event_record(
            kind=GovernanceEvent.Kind.ROUND_BLOCKED,
            message=f"Round {number} of '{plan.name}' blocked: {report.summary()}",
            actor=actor,
            agreement=plan.agreement,
            round=round,
            details={"failed": [c.name for c in report.failures]},
        )
        # Nothing is live now: the plan pauses (or stops, if waiting mends nothing), saying why.
        from .plans import plan_blocked

        plan_blocked(plan=plan, round=round)
        return round, True
    _set_status(round, Status.AWAITING_APPROVAL)
    _apply_standing_approvals(round)
    _maybe_approved(round, actor=actor)
    return round, True


def _apply_standing_approvals(round: TrainingRound) -> None:
    orgs, _ = governance.required_approvers(round)
    # An organisation that already decided (per round, or by an earlier standing approval) is
    # not decided for again: one decision per organisation and round (the unique constraint).
    decided = set(RoundApproval.objects.filter(round=round).values_list("organisation_id", flat=True))
    eps = governance_eps(round)
    for standing in StandingApproval.objects.filter(
        plan=round.plan, organisation_id__in=orgs - decided, revoked_at__isnull=True
    ).order_by("given_at", "pk"):
        if standing.organisation_id in decided:  # two standing approvals of one organisation
            continue
        if standing.max_rounds is not None and standing.rounds_used() >= standing.max_rounds:
            continue
        if standing.max_epsilon is not None:
            from accounting.selectors import dataset_epsilon_spent

            over = False
            for dataset in round.participating_datasets().filter(organisation_id=standing.organisation_id):
                spent_under_plan = dataset_epsilon_spent(dataset=dataset)
                if spent_under_plan + eps.get(dataset.slug, 0.0) > standing.max_epsilon + 1e-12:
                    over = True
            if over:
                continue
        RoundApproval.objects.create(
            round=round,
            organisation_id=standing.organisation_id,
            decision=RoundApproval.Decision.APPROVE,
            decided_by=standing.given_by,
            standing_approval=standing,
            reason="",
        )
        decided.add(standing.organisation_id)
        event_record(
            kind=GovernanceEvent.Kind.ROUND_APPROVED,
            message=f"{standing.organisation.name} approved round {round.number} by standing approval.",
            actor=standing.given_by,
            agreement=round.plan.agreement,
            organisation=standing.organisation,
            round=round,
        )


def governance_eps(round: TrainingRound) -> dict:
    for check in round.governance_report.get("checks", []):
        if check["name"] == governance.DP_PARAMETERS:
            return check["details"].get("epsilon_per_round", {})
    return {}


def _maybe_approved(round: TrainingRound, *, actor) -> None:
    if governance.check_approvals(round).passed:
        _set_status(round, Status.APPROVED)
        _on_commit_enqueue("round_start_task", round.pk)


def _lock_awaiting(round: TrainingRound) -> TrainingRound:
    round = TrainingRound.objects.select_for_update().select_related("plan__agreement").get(pk=round.pk)
    if round.status != Status.AWAITING_APPROVAL:
        raise InvalidState(MSG_NOT_AWAITING.format(number=round.number, status=in_english(round.get_status_display()).lower()))
    return round


def _check_decider(actor, round: TrainingRound, organisation: Organisation) -> None:
    require_representative(actor, organisation=organisation, agreement=round.plan.agreement, action="decide on this round")
    orgs, _ = governance.required_approvers(round)
    if organisation.pk not in orgs:
        raise ValidationFailed(MSG_NOT_INVOLVED.format(organisation=organisation.name, number=round.number))
    existing = RoundApproval.objects.filter(round=round, organisation=organisation).first()
    if existing:
        raise InvalidState(
            MSG_ALREADY_DECIDED.format(organisation=organisation.name, decision=existing.decision, number=round.number)
        )


@transaction.atomic
def round_approve(*, actor, round: TrainingRound, organisation: Organisation) -> RoundApproval:
    round = _lock_awaiting(round)
    _check_decider(actor, round, organisation)
    approval = RoundApproval.objects.create(
        round=round, organisation=organisation, decision=RoundApproval.Decision.APPROVE, decided_by=actor
    )
    event_record(
        kind=GovernanceEvent.Kind.ROUND_APPROVED,
        message=f"{organisation.name} approved round {round.number} of '{round.plan.name}'.",
        actor=actor,
        agreement=round.plan.agreement,
        organisation=organisation,
        round=round,
    )
    _maybe_approved(round, actor=actor)
    return approval


@transaction.atomic
def round_reject(*, actor, round: TrainingRound, organisation: Organisation, reason: str) -> RoundApproval:
    reason = (reason or "").strip()
    if not reason:
        raise field_error("reason", MSG_REASON_REQUIRED)
    round = _lock_awaiting(round)
    _check_decider(actor, round, organisation)
    approval = RoundApproval.objects.create(
        round=round, organisation=organisation, decision=RoundApproval.Decision.REJECT, decided_by=actor, reason=reason
    )
    _set_status(round, Status.REJECTED, reason=f"Rejected by {organisation.name}: {reason}")
    event_record(
        kind=GovernanceEvent.Kind.ROUND_REJECTED,
        message=f"{organisation.name} rejected round {round.number} of '{round.plan.name}': {reason}",
        actor=actor,
        agreement=round.plan.agreement,
        organisation=organisation,
        round=round,
    )
    # Nothing is live now and no retry mends a refusal: the plan pauses, saying who refused
    # and why, until it is resumed (ARCHITECTURE.md, Rounds).
    from .plans import plan_round_failed

    plan_round_failed(round=round, retryable=False, actor=actor)
    return approval


@transaction.atomic
def standing_approval_give(
    *, actor, plan: TrainingPlan, organisation: Organisation, max_rounds: int | None = None, max_epsilon: float | None = None
) -> StandingApproval:
    """Approve the plan's future rounds for `organisation`, up to a count or an epsilon."""
    require_representative(actor, organisation=organisation, agreement=plan.agreement, action="give standing approvals")
    if not plan.datasets.filter(organisation=organisation).exists():
        raise ValidationFailed(f"{organisation.name} has no dataset in plan '{plan.name}'.")
    if max_rounds is None and max_epsilon is None:
        raise field_error("max_rounds", "Bound the standing approval by a number of rounds, an epsilon, or both.")
    if max_rounds is not None and max_rounds < 1:
        raise field_error("max_rounds", "The number of rounds must be at least 1.")
    if max_epsilon is not None and max_epsilon <= 0:
        raise field_error("max_epsilon", "The epsilon bound must be greater than 0.")
    standing = StandingApproval.objects.create(
        plan=plan, organisation=organisation, max_rounds=max_rounds, max_epsilon=max_epsilon, given_by=actor
    )
    bound = " and ".join(
        b
        for b in (f"{max_rounds} rounds" if max_rounds else "", f"epsilon {max_epsilon} per dataset" if max_epsilon else "")
        if b
    )
    event_record(
        kind=GovernanceEvent.Kind.STANDING_APPROVAL,
        message=f"{organisation.name} gave a standing approval for '{plan.name}' up to {bound}.",
        actor=actor,
        agreement=plan.agreement,
        organisation=organisation,
    )
    # A round already waiting benefits at once.
    # Locked before anything is read: a representative deciding on the round meanwhile waits,
    # and whoever comes second sees the first's approval (the round's approvals are re-read
    # under the lock by _apply_standing_approvals, which skips an organisation that decided).
    waiting = TrainingRound.objects.select_for_update().filter(plan=plan, status=Status.AWAITING_APPROVAL).first()
    if waiting is not None:
        _apply_standing_approvals(waiting)
        _maybe_approved(waiting, actor=actor)
    return standing


@transaction.atomic
def round_abort(
    *, actor, round: TrainingRound, reason: str, status: str = Status.ABORTED, retryable: bool = False
) -> TrainingRound:
    """Stop a live round (ABORTED, or FAILED for an error). Budget per ARCHITECTURE.md, Ledger 2:
    released only if the round never got past the point where updates could be released.

    Then the plan's retry policy: a `retryable` abort (dropouts below the threshold, a missed
    deadline) is tried again after the plan's backoff, up to its limit of failed tries in a
    row; any other ends with the plan paused, saying why (services.plans.plan_round_failed)."""
    from accounting.services.budget import budget_release

    round = TrainingRound.objects.select_for_update().select_related("plan__agreement").get(pk=round.pk)
    if round.status not in TrainingRound.LIVE_STATES:
        return round
    had_reservation = round.status in (Status.RUNNING, Status.AGGREGATING)
    # An update may have left a partner once the masked-input phase opened: then the budget
    # stays spent. Before that, no partner has sent anything computed from its data.
    no_update_released = round.status == Status.RUNNING and round.phase in ("", "advertise_keys", "share_keys")
    _set_status(round, status, reason=reason)
    if had_reservation:
        if no_update_released:
            budget_release(round=round, actor=actor, reason=reason, no_update_released=True)
        else:
            from .orchestration import receipts_missing, round_budget_settle

            # Per dataset: those whose masked input was received stay charged; the others
            # sent nothing computed from their data and are released, naming why.
            round_budget_settle(round=round, actor=actor)
            # Charged whether or not the partners' receipts came; the missing ones are flagged.
            round.metrics = {**(round.metrics or {}), "receipts_missing": receipts_missing(round)}
            round.save(update_fields=["metrics"])
    kind = GovernanceEvent.Kind.ROUND_FAILED if status == Status.FAILED else GovernanceEvent.Kind.ROUND_ABORTED
    event_record(
        kind=kind,
        message=f"Round {round.number} of '{round.plan.name}' {status}: {reason}",
        actor=actor,
        agreement=round.plan.agreement,
        round=round,
    )
    from .plans import plan_round_failed

    plan_round_failed(round=round, retryable=retryable and status == Status.ABORTED, actor=actor)
    return round


@transaction.atomic
def round_start(*, round_id: int, actor=None) -> TrainingRound | None:
    """APPROVED -> RUNNING: re-run every governance check and reserve the budget in the same
    transaction. Returns None when the round is gone or already past APPROVED (a repeated
    task delivery), so the caller does nothing twice."""
    from accounting.services.budget import BudgetExceeded, budget_reserve

    round = TrainingRound.objects.select_for_update().select_related("plan__agreement").filter(pk=round_id).first()
    if round is None or round.status != Status.APPROVED:
        return None
    report = governance.governance_report(round, stage=governance.STAGE_START)
    round.governance_report = report.to_dict()
    if not report.passed:
        _set_status(round, Status.BLOCKED, reason=report.summary())
        event_record(
            kind=GovernanceEvent.Kind.ROUND_BLOCKED,
            message=f"Round {round.number} of '{round.plan.name}' blocked at start: {report.summary()}",
            actor=actor,
            agreement=round.plan.agreement,
            round=round,
            details={"failed": [c.name for c in report.failures]},
        )
        # The plan goes on without what blocked this round if it can (e.g. a party that gave
        # notice is left out of the next request); otherwise it stops, saying why.
        from .orchestration import plan_continue

        plan_continue(plan=round.plan)
        return round
    # Who takes part is decided before anything is reserved: a partner whose agent is offline
    # is left out (nothing reserved on its dataset) while enough partners remain.
    from .agents import round_roster_choose

    too_few = round_roster_choose(round=round)
    if too_few:
        _set_status(round, Status.BLOCKED, reason=too_few)
        event_record(
            kind=GovernanceEvent.Kind.ROUND_BLOCKED,
            message=f"Round {round.number} of '{round.plan.name}' blocked at start: {too_few}",
            actor=actor,
            agreement=round.plan.agreement,
            round=round,
            details={"failed": ["agents_online"]},
        )
        return round
    try:
        # The check above and this reservation share one transaction; budget_reserve locks
        # every dataset's budget row, so a concurrent round cannot slip in between.
        budget_reserve(round=round, actor=actor)
    except BudgetExceeded as exc:
        _set_status(round, Status.BLOCKED, reason=str(exc))
        event_record(
            kind=GovernanceEvent.Kind.ROUND_BLOCKED, message=str(exc), actor=actor, agreement=round.plan.agreement, round=round
        )
        # Budget runs out for good (ARCHITECTURE.md, Ledger 2): the plan stops, saying why.
        from .plans import plan_blocked

        plan_blocked(plan=round.plan, round=round, permanent=True)
        return round
    _set_status(round, Status.RUNNING, started_at=timezone.now())
    from .orchestration import round_open_protocol

    round = round_open_protocol(round=round)
    if round.status != Status.RUNNING:
        return round
    left_out = (round.metrics or {}).get("left_out") or {}
    event_record(
        kind=GovernanceEvent.Kind.ROUND_STARTED,
        message=f"Round {round.number} of '{round.plan.name}' started; budget reserved."
        + "".join(f" {slug} left out: {r['reason']}." for slug, r in sorted(left_out.items())),
        actor=actor,
        agreement=round.plan.agreement,
        round=round,
    )
    return round
