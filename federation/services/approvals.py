"""Who decides on a round, and the standing approvals that decide ahead of time.

Writes RoundApproval rows and their events; whether the round is then APPROVED is the
lifecycle's (services/rounds.py), which calls these under the round's row lock.
"""

from __future__ import annotations

from fedgov.errors import InvalidState, ValidationFailed

from .. import governance
from ..access import require_representative
from ..models import GovernanceEvent, Organisation, RoundApproval, StandingApproval, TrainingPlan, TrainingRound
from ..selectors.rounds import report_epsilons
from .common import event_record, field_error

MSG_ALREADY_DECIDED = "{organisation} already {decision}d round {number}."
MSG_NOT_INVOLVED = "{organisation} has no dataset in round {number}; only the organisations whose data it uses decide."


def decider_check(actor, round: TrainingRound, organisation: Organisation) -> None:
    """`actor` may decide on `round` for `organisation`, which has not decided yet."""
    require_representative(actor, organisation=organisation, agreement=round.plan.agreement, action="decide on this round")
    orgs, _ = governance.required_approvers(round)
    if organisation.pk not in orgs:
        raise ValidationFailed(MSG_NOT_INVOLVED.format(organisation=organisation.name, number=round.number))
    existing = RoundApproval.objects.filter(round=round, organisation=organisation).first()
    if existing:
        raise InvalidState(
            MSG_ALREADY_DECIDED.format(organisation=organisation.name, decision=existing.decision, number=round.number)
        )


def standing_approvals_apply(round: TrainingRound) -> None:
    """Approve `round` for every organisation whose standing approval on its plan still covers
    it (rounds left, epsilon left), recording each."""
    orgs, _ = governance.required_approvers(round)
    # An organisation that already decided (per round, or by an earlier standing approval) is
    # not decided for again: one decision per organisation and round (the unique constraint).
    decided = set(RoundApproval.objects.filter(round=round).values_list("organisation_id", flat=True))
    eps = report_epsilons(round=round)
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


def standing_approval_create(
    *, actor, plan: TrainingPlan, organisation: Organisation, max_rounds: int | None = None, max_epsilon: float | None = None
) -> StandingApproval:
    """Record `organisation`'s approval of the plan's future rounds, up to a count or an
    epsilon (services.rounds.standing_approval_give applies it to a round already waiting)."""
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
    return standing


def approval_record(*, actor, round: TrainingRound, organisation: Organisation, decision: str, reason: str = "") -> RoundApproval:
    """One organisation's decision on a round (checked by decider_check); an approval is
    recorded as an event here, a rejection by the round's transition to REJECTED."""
    approval = RoundApproval.objects.create(round=round, organisation=organisation, decision=decision, decided_by=actor, reason=reason)
    if decision == RoundApproval.Decision.APPROVE:
        event_record(
            kind=GovernanceEvent.Kind.ROUND_APPROVED,
            message=f"{organisation.name} approved round {round.number} of '{round.plan.name}'.",
            actor=actor,
            agreement=round.plan.agreement,
            organisation=organisation,
            round=round,
        )
    return approval
