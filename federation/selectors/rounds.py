"""Training rounds: what a user sees, their decisions, costs, progress and reservations."""

from __future__ import annotations

from collections import Counter

from django.db.models import F, QuerySet
from django.utils.translation import gettext_noop

from fedgov.errors import NotFound, PermissionDenied

from .. import access
from ..models import Membership, Organisation, RoundApproval, RoundParticipant, RoundProtocol, TrainingRound
from .common import get_visible

MSG_NO_DECIDER = gettext_noop("You represent no organisation whose data this round uses; only they decide on it.")


def round_for(*, user, pk: int) -> TrainingRound:
    return get_visible(access.visible_rounds(user).select_related("plan__agreement"), what="Round", pk=pk)


def round_list_for(*, user, status: str | None = None) -> QuerySet[TrainingRound]:
    qs = access.visible_rounds(user).select_related("plan__agreement").order_by("-requested_at", "-id")
    if status:
        qs = qs.filter(status=status)
    return qs


def rounds_for(*, user) -> QuerySet[TrainingRound]:
    """The API's rounds: `access.visible_rounds(user)` (from the per-request list of visible
    agreements), with the requester's username (one joined column, not the whole user row)."""
    rounds = access.visible_rounds(user, cached=True)
    return rounds.annotate(requested_by_username=F("requested_by__username"))


def round_context(*, rounds: list) -> dict:
    """Approvals and participant counts of a page of rounds: two queries, whatever its size."""
    ids = [r.pk for r in rounds]
    approvals: dict[int, list] = {}
    # Sorted here, not with ORDER BY: a round has a handful of approvals, and compiling the
    # ORDER BY cost Django more than the rest of the query.
    rows = RoundApproval.objects.filter(round_id__in=ids).select_related("organisation")
    for approval in sorted(rows, key=lambda a: (a.decided_at, a.pk)):
        approvals.setdefault(approval.round_id, []).append(approval)
    # Counted here rather than with GROUP BY: a round has a handful of participants, and the
    # plain lookup costs Django far less to build than an aggregate.
    counts = Counter(RoundParticipant.objects.filter(round_id__in=ids).values_list("round_id", flat=True))
    return {"approvals": approvals, "participant_counts": counts}


def round_participants(*, round: TrainingRound) -> QuerySet[RoundParticipant]:
    """The datasets taking part in the round, by dataset slug."""
    return RoundParticipant.objects.filter(round=round).select_related("dataset__organisation").order_by("dataset__slug")


def round_organisations(*, round: TrainingRound) -> list[Organisation]:
    """The organisations whose datasets take part in the round (who may decide on it), by slug."""
    return list(Organisation.objects.filter(datasets__round_links__round=round).distinct().order_by("slug"))


def round_protocol_config(*, round_id: int) -> dict | None:
    """The secure-aggregation configuration stored for the round, if any."""
    protocol = RoundProtocol.objects.filter(round_id=round_id).only("config", "round_id").first()
    return None if protocol is None else protocol.config


# --- Governance report and costs ---------------------------------------------------------------


def report_epsilons(*, round: TrainingRound) -> dict:
    """Epsilon per dataset slug from the round's stored report (dp_parameters details)."""
    from .. import governance

    for check in (round.governance_report or {}).get("checks", []):
        if check.get("name") == governance.DP_PARAMETERS:
            return dict((check.get("details") or {}).get("epsilon_per_round") or {})
    return {}


def report_checks(*, round: TrainingRound) -> list[dict]:
    return list((round.governance_report or {}).get("checks", []))


def round_costs(*, round: TrainingRound) -> list[dict]:
    """What the ledger will record for each dataset if this round runs (issue 17): the composed
    increase epsilon(spent + round) - epsilon(spent) at the dataset's delta, and the composed
    total after it, from the accountant's own budget check. A round's stand-alone epsilon
    overstates the cost of every round after the first: RDP composes sub-additively. A round
    already holding its reservation shows what that RESERVE entry recorded."""
    from accounting import chain
    from accounting import selectors as acct
    from accounting.services import budget as accounting

    reserves = {e.dataset_id: e for e in acct.ledger_entries(round=round).filter(kind=chain.RESERVE)}
    rows = []
    for check in accounting.budget_check(round=round):
        dataset, spent, budget = check.dataset, float(check.spent), float(check.budget)
        entry = reserves.get(dataset.pk)
        if check.reserved and entry is not None:
            before = acct.ledger_entries(dataset=dataset).filter(seq__lt=entry.seq).order_by("-seq").first()
            after = float(entry.epsilon_spent_after)
            cost = after - float(before.epsilon_spent_after if before else 0.0)
            spent = after - cost
        else:
            cost = float(check.requested)
            after = spent + cost
        rows.append(
            {
                "dataset": dataset,
                "cost": cost,
                "spent": spent,
                "budget": budget,
                "remaining": budget - spent,
                "after": after,
                "left_after": budget - after,
                "fits": check.ok,
                "reserved": check.reserved,
            }
        )
    return rows


def round_reservations(*, round: TrainingRound) -> dict[str, str]:
    """dataset slug -> reserved | committed | released, from the round's ledger entries."""
    from accounting import selectors as acct

    return acct.round_reservation_state(round=round)


# --- Decisions ---------------------------------------------------------------------------------


def round_decisions(*, round: TrainingRound) -> list[dict]:
    """Every organisation that decides on the round, with its decision if any."""
    from .. import governance

    orgs, needed = governance.required_approvers(round)
    decisions = {a.organisation_id: a for a in RoundApproval.objects.filter(round=round).select_related("decided_by")}
    return [
        {"organisation": org, "approval": decisions.get(org.pk)}
        for org in Organisation.objects.filter(pk__in=orgs).order_by("name")
    ]


def approvals_needed(*, round: TrainingRound) -> int:
    from .. import governance

    return governance.required_approvers(round)[1]


def undecided_organisations(*, user, round: TrainingRound) -> list[Organisation]:
    """The organisations of `access.round_deciders(user, round)` that have not decided yet:
    one query, whatever the number of organisations."""
    decided = RoundApproval.objects.filter(round=round).values("organisation_id")
    involved = round.participants.values("organisation_id")
    return list(access.represented_organisations(user).filter(id__in=involved).exclude(id__in=decided).order_by("name"))


def rounds_to_approve(*, user) -> list[TrainingRound]:
    """Rounds awaiting a decision from an organisation this user represents."""
    orgs = list(access.organisations_of(user, Membership.Role.REPRESENTATIVE).values_list("pk", flat=True))
    rounds = (
        TrainingRound.objects.filter(status=TrainingRound.Status.AWAITING_APPROVAL, participants__organisation__in=orgs)
        .exclude(approvals__organisation__in=orgs)
        .select_related("plan")
        .distinct()
    )
    return list(rounds)


def approval_items(*, user) -> list[tuple]:
    """(round, organisation) pairs waiting for this user's decision: one per organisation it
    represents whose data the round uses and which has not decided yet."""
    orgs = list(access.organisations_of(user, Membership.Role.REPRESENTATIVE))
    items = []
    for round in rounds_to_approve(user=user):
        involved = set(round.participants.values_list("organisation_id", flat=True))
        decided = set(RoundApproval.objects.filter(round=round).values_list("organisation_id", flat=True))
        items.extend((round, org) for org in orgs if org.pk in involved and org.pk not in decided)
    return items


def deciders_for(*, user, round: TrainingRound) -> list[Organisation]:
    """The organisations the user decides for on this round; 403 if none."""
    orgs = access.round_deciders(user, round)
    if not orgs:
        raise PermissionDenied(MSG_NO_DECIDER)
    return orgs


def approval_target(*, user, pk: int, org_slug: str) -> tuple[TrainingRound, Organisation]:
    """The round and the deciding organisation; non-members 404, other roles 403."""
    from .agreements import party_of

    round = round_for(user=user, pk=pk)
    org = party_of(agreement=round.plan.agreement, slug=org_slug)
    access.require_representative(user, organisation=org, agreement=round.plan.agreement, action="decide on this round")
    if not round.participants.filter(organisation=org).exists():
        raise NotFound(f"{org.name} has no dataset in round {round.number}.")
    return round, org


def decision_of(*, round: TrainingRound, organisation) -> RoundApproval | None:
    return RoundApproval.objects.filter(round=round, organisation=organisation).select_related("decided_by").first()


def standing_approvals_of(*, round: TrainingRound, organisation):
    """`organisation`'s standing approvals of the round's plan still in force."""
    return round.plan.standing_approvals.filter(organisation=organisation, revoked_at__isnull=True)


# --- Progress ----------------------------------------------------------------------------------


def round_progress(*, round: TrainingRound, now=None) -> dict:
    """What the live round page shows: status, phase, who has answered, time left."""
    from django.utils import timezone

    now = now or timezone.now()
    participants = list(
        RoundParticipant.objects.filter(round=round)
        .select_related("dataset__organisation")
        .order_by("dataset__organisation__name")
    )
    seconds_left = None
    if round.phase_deadline and round.status in TrainingRound.LIVE_STATES:
        seconds_left = max(int((round.phase_deadline - now).total_seconds()), 0)
    answered = [p for p in participants if round.phase and p.last_phase == round.phase]
    metrics = round.metrics or {}
    return {
        "numeric_metrics": [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)],
        "contributors": metrics.get("contributors"),
        "dropouts": metrics.get("dropouts"),
        "round": round,
        "participants": participants,
        "answered": len(answered),
        "seconds_left": seconds_left,
        "final": round.status in TrainingRound.FINAL_STATES,
    }


def round_live(*, user, round: TrainingRound) -> dict:
    """Everything on the round page that changes while the round runs: progress, the
    decisions, the budget on the ledger, whether the user still has to decide (the view adds
    which partners' agents are online)."""
    return {
        "round": round,
        "plan": round.plan,
        "decisions": round_decisions(round=round),
        "needed": approvals_needed(round=round),
        "undecided_orgs": undecided_organisations(user=user, round=round),
        "reservations": round_reservations(round=round),
        **round_progress(round=round),
    }


def approval_page(*, round: TrainingRound, organisation) -> dict:
    """The reads of a representative's decision page: governance report, the epsilon this
    round costs each dataset against what was spent and what remains, the plan's progress,
    the decisions so far and this organisation's own (the view adds which partners' agents are
    online)."""
    decision = decision_of(round=round, organisation=organisation)
    return {
        "round": round,
        "plan": round.plan,
        "organisation": organisation,
        "checks": report_checks(round=round),
        "report": round.governance_report or {},
        "costs": round_costs(round=round),
        "progress": plan_progress(plan=round.plan),
        "decisions": round_decisions(round=round),
        "needed": approvals_needed(round=round),
        "decision": decision,
        "open": round.status == TrainingRound.Status.AWAITING_APPROVAL and decision is None,
        "standing": standing_approvals_of(round=round, organisation=organisation),
    }


def plan_progress(*, plan) -> dict:
    completed = plan.rounds.filter(status=TrainingRound.Status.COMPLETED).count()
    return {"completed": completed, "total": plan.rounds_total, "remaining": max(plan.rounds_total - completed, 0)}
