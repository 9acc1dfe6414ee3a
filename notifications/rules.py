"""Who is told what when a governance event is recorded (`RULES`: event kind -> rule), and
what a ledger that fails verification tells whom. A rule returns the notices to write and the
earlier ones it withdraws; `notifications.services` writes them, in the event's transaction.
"""

from __future__ import annotations

from django.urls import reverse

from federation.i18n import in_english
from federation.models import (
    AgreementSignature,
    GovernanceEvent,
    RoundApproval,
    TrainingRound,
)

from . import selectors
from .models import Kind, Notification
from .services import Notice, Withdrawal, key_digest, notify, withdraw

EK = GovernanceEvent.Kind


def _admin_ids() -> set[int]:
    return set(selectors.administrators().values_list("id", flat=True))


def _round_link(round) -> str:
    return reverse("web:round_detail", args=[round.pk])


def _agreement_link(agreement) -> str:
    return reverse("web:agreement_detail", args=[agreement.pk])


def _round_orgs(round) -> set[int]:
    return set(round.participating_datasets().values_list("organisation_id", flat=True))


def _party_orgs(agreement) -> set[int]:
    return set(agreement.party_links.values_list("organisation_id", flat=True))


def _round_data(round) -> dict:
    return {"round": round.pk, "round_number": round.number, "plan": round.plan_id, "agreement": round.plan.agreement_id}


def _approval_key(round) -> str:
    return f"round:{round.pk}:approval"


def _signature_key(agreement) -> str:
    return f"agreement:{agreement.pk}:v{agreement.version}:signature"


def approval_waiting(event) -> tuple[list[Notice], list[Withdrawal]]:
    """A round was requested: the representatives of each organisation whose approval it
    needs. A request that failed a governance check waits for nobody (the ROUND_BLOCKED
    event that follows says so); an organisation a standing approval covers is withdrawn by
    the ROUND_APPROVED event recorded for it in the same transaction."""
    round = event.round
    if round is None or (round.governance_report or {}).get("passed") is False:
        return [], []
    from federation.governance import required_approvers

    orgs, needed = required_approvers(round)
    orgs -= set(RoundApproval.objects.filter(round=round).values_list("organisation_id", flat=True))
    if not orgs:
        return [], []
    plan = round.plan
    return [Notice(
        kind=Kind.APPROVAL_WAITING,
        subject_key=_approval_key(round),
        title=f"Round {round.number} of '{plan.name}' waits for your approval",
        body=(f"Round {round.number} of plan '{plan.name}' under '{plan.agreement.title}' was requested and passed the "
              f"governance checks. It needs {needed} organisation(s) to approve; yours is one of them."),
        link=_round_link(round),
        organisations=orgs,
        data=_round_data(round),
    )], []


def approval_given(event) -> tuple[list[Notice], list[Withdrawal]]:
    if event.round is None or event.organisation_id is None:
        return [], []
    return [], [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(event.round), {event.organisation_id}, "approved")]


def round_outcome(kind: str):
    def rule(event) -> tuple[list[Notice], list[Withdrawal]]:
        round = event.round
        if round is None:
            return [], []
        users = {round.requested_by_id} if round.requested_by_id else set()
        if kind in (Kind.ROUND_FAILED, Kind.ROUND_ABORTED):
            users |= _admin_ids()
        notice = Notice(
            kind=kind,
            subject_key=f"round:{round.pk}:{kind}",
            title=f"Round {round.number} of '{round.plan.name}': {in_english(Kind(kind).label).split()[-1].lower()}",
            body=event.message,
            link=_round_link(round),
            organisations=_round_orgs(round),
            users=users,
            data=_round_data(round),
        )
        notices = [notice, *budget_notices(round)]
        withdrawals = [] if kind == Kind.ROUND_COMPLETED else [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(round), None, kind)]
        return notices, withdrawals

    return rule


def round_rejected(event) -> tuple[list[Notice], list[Withdrawal]]:
    if event.round is None:
        return [], []
    return [], [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(event.round), None, "rejected")]


def round_started(event) -> tuple[list[Notice], list[Withdrawal]]:
    """The budget was reserved: a dataset may have crossed 80% or be unable to pay for the
    next round. Nobody's approval is awaited any more (a quorum may have been reached)."""
    if event.round is None:
        return [], []
    return budget_notices(event.round), [Withdrawal(Kind.APPROVAL_WAITING, _approval_key(event.round), None, "started")]


BUDGET_WARNING_FRACTION = 0.8


def budget_notices(round: TrainingRound) -> list[Notice]:
    """Budget at 80% and budget exhausted, for each dataset of `round`, told once per dataset
    and budget (a raised budget can warn again). Exhausted: another round of this plan would
    no longer fit, by the ledger's own composition (ARCHITECTURE.md, Ledger 1; open
    reservations count as spent)."""
    from accounting import accountant as acc
    from accounting.ledger import project
    from accounting.models import DatasetBudget
    from accounting.selectors import effective_budget
    from accounting.services.budget import round_dp_event

    datasets = list(round.participating_datasets().select_related("organisation"))
    rows = {b.dataset_id: b for b in DatasetBudget.objects.filter(dataset_id__in=[d.pk for d in datasets])}
    admins = None
    out = []
    for dataset in datasets:
        row = rows.get(dataset.pk)
        if row is None or row.entry_count == 0:
            continue
        limit, spent = effective_budget(row, dataset), row.epsilon_spent
        key, event = round_dp_event(round=round, dataset=dataset)
        after_next = project(row, dataset, add=(f"{key}:next", acc.rdp_vector(event))).epsilon_spent
        exhausted = after_next > limit + 1e-12
        if not exhausted and spent < BUDGET_WARNING_FRACTION * limit:
            continue
        admins = _admin_ids() if admins is None else admins
        common = dict(
            subject_key=f"dataset:{dataset.pk}:budget:{limit!r}",
            link=reverse("web:dataset_detail", args=[dataset.slug]),
            organisations={dataset.organisation_id},
            users=admins,
            data={"dataset": dataset.slug, "epsilon_spent": spent, "epsilon_budget": limit},
        )
        if exhausted:
            out.append(Notice(
                kind=Kind.BUDGET_EXHAUSTED,
                title=f"Budget of {dataset.name} exhausted",
                body=(f"Dataset {dataset.slug} has spent {spent:.3g} of its epsilon budget {limit:.3g}; another round of "
                      f"'{round.plan.name}' would bring it to {after_next:.3g}, so none runs unless the budget is raised."),
                **common,
            ))
        else:
            out.append(Notice(
                kind=Kind.BUDGET_80,
                title=f"Budget of {dataset.name} is {100 * spent / limit:.0f}% spent",
                body=f"Dataset {dataset.slug} has spent {spent:.3g} of its epsilon budget {limit:.3g}.",
                **common,
            ))
    return out


def signature_requested(event) -> tuple[list[Notice], list[Withdrawal]]:
    agreement = event.agreement
    if agreement is None:
        return [], []
    signed = set(AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).values_list("organisation_id", flat=True))
    orgs = _party_orgs(agreement) - signed
    if not orgs:
        return [], []
    return [Notice(
        kind=Kind.SIGNATURE_REQUESTED,
        subject_key=_signature_key(agreement),
        title=f"'{agreement.title}' (version {agreement.version}) waits for your signature",
        body=event.message,
        link=_agreement_link(agreement),
        organisations=orgs,
        data={"agreement": agreement.pk, "version": agreement.version, "terms_hash": agreement.terms_hash},
    )], []


def signature_given(event) -> tuple[list[Notice], list[Withdrawal]]:
    if event.agreement is None or event.organisation_id is None:
        return [], []
    return [], [Withdrawal(Kind.SIGNATURE_REQUESTED, _signature_key(event.agreement), {event.organisation_id}, "signed")]


def exit_rule(kind: str):
    def rule(event) -> tuple[list[Notice], list[Withdrawal]]:
        agreement = event.agreement
        if agreement is None:
            return [], []
        who = event.organisation.name if event.organisation_id else "A party"
        return [Notice(
            kind=kind,
            subject_key=f"agreement:{agreement.pk}:party:{event.organisation_id}:{kind}",
            title=(f"{who} gave exit notice from '{agreement.title}'" if kind == Kind.EXIT_NOTICE
                   else f"{who} has left '{agreement.title}'"),
            body=event.message,
            link=_agreement_link(agreement),
            organisations=_party_orgs(agreement),
            users=_admin_ids(),
            data={"agreement": agreement.pk, "organisation": event.organisation_id, **(event.details or {})},
        )], []

    return rule


def plan_paused(event) -> tuple[list[Notice], list[Withdrawal]]:
    agreement = event.agreement
    if agreement is None:
        return [], []
    plan_id = (event.details or {}).get("plan")
    return [Notice(
        kind=Kind.PLAN_PAUSED,
        subject_key=f"event:{event.pk}",
        title=f"A training plan under '{agreement.title}' was {'paused' if event.kind == 'plan_paused' else 'stopped'}",
        body=event.message,
        link=reverse("web:plan_detail", args=[plan_id]) if isinstance(plan_id, int) else _agreement_link(agreement),
        organisations=_party_orgs(agreement),
        users=_admin_ids(),
        data={"agreement": agreement.pk, **({"plan": plan_id} if plan_id else {})},
    )], []


# The mapping table: governance event kind -> rule. Extend it here; a kind with no entry
# notifies nobody. "plan_paused" is named by its value: the kind exists once the plan-pause
# work lands, and this entry then applies without a change here.
RULES = {
    EK.AGREEMENT_SUBMITTED: signature_requested,
    EK.AGREEMENT_AMENDED: signature_requested,
    EK.AGREEMENT_SIGNED: signature_given,
    EK.ROUND_REQUESTED: approval_waiting,
    EK.ROUND_APPROVED: approval_given,
    EK.ROUND_REJECTED: round_rejected,
    EK.ROUND_STARTED: round_started,
    EK.ROUND_BLOCKED: round_outcome(Kind.ROUND_BLOCKED),
    EK.ROUND_ABORTED: round_outcome(Kind.ROUND_ABORTED),
    EK.ROUND_FAILED: round_outcome(Kind.ROUND_FAILED),
    EK.ROUND_COMPLETED: round_outcome(Kind.ROUND_COMPLETED),
    EK.PLAN_STOPPED: plan_paused,
    "plan_paused": plan_paused,
    EK.EXIT_NOTICE: exit_rule(Kind.EXIT_NOTICE),
    EK.PARTY_EXITED: exit_rule(Kind.EXIT_EFFECTIVE),
}


def notify_for_event(event: GovernanceEvent) -> list[Notification]:
    """Write the inbox and outbox rows `event` causes, in the caller's transaction."""
    rule = RULES.get(event.kind)
    if rule is None:
        return []
    notices, withdrawals = rule(event)
    for withdrawal in withdrawals:
        withdraw(withdrawal)
    created: list[Notification] = []
    for notice in notices:
        created += notify(notice, event=event)
    return created


# --- Ledger verification -----------------------------------------------------------------------


def ledger_verification_check() -> list[Notification]:
    """Verify every ledger (accounting.audit.verify_all) and tell the administrators and the
    dataset's representatives about each chain that fails, once per distinct failure."""
    from accounting.audit import verify_all
    from federation.models import Dataset

    out: list[Notification] = []
    failing = [r for r in verify_all() if not r.ok]
    if not failing:
        return out
    datasets = {d.slug: d for d in Dataset.objects.filter(slug__in=[r.dataset for r in failing])}
    admins = _admin_ids()
    for result in failing:
        dataset = datasets.get(result.dataset)
        error = str(result.error)
        notice = Notice(
            kind=Kind.LEDGER_VERIFICATION_FAILED,
            subject_key=f"ledger:{result.dataset}:{key_digest(error)[:16]}",
            title=f"The budget ledger of {result.dataset} fails verification",
            body=f"Verifying the ledger of {result.dataset} failed: {error}",
            link=reverse("web:ledger", args=[dataset.slug]) if dataset else "",
            organisations={dataset.organisation_id} if dataset else set(),
            users=admins,
            data={"dataset": result.dataset, "bad_seq": result.bad_seq, "error": error},
        )
        out += notify(notice)
    return out
