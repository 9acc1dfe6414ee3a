"""Reads, scoped to what the user may see (ARCHITECTURE.md, Conventions 1).

Who sees what is `federation.access`'s rule; this module only loads and shapes the rows."""

from __future__ import annotations

from . import access
from .access import is_administrator, is_auditor, organisations_of, visible_agreements, visible_rounds
from .models import Agreement, AgreementSignature, Membership, TrainingRound


def agreements_to_sign(user):
    """Agreements awaiting signature from an organisation this user represents."""
    orgs = organisations_of(user, Membership.Role.REPRESENTATIVE)
    pending = []
    for agreement in Agreement.objects.filter(status=Agreement.Status.AWAITING_SIGNATURES, parties__in=orgs).distinct():
        signed = set(
            AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).values_list(
                "organisation_id", flat=True
            )
        )
        for org in agreement.parties.filter(pk__in=orgs).exclude(pk__in=signed):
            pending.append((agreement, org))
    return pending


def rounds_to_approve(user):
    """Rounds awaiting a decision from an organisation this user represents."""
    orgs = list(organisations_of(user, Membership.Role.REPRESENTATIVE).values_list("pk", flat=True))
    rounds = (
        TrainingRound.objects.filter(status=TrainingRound.Status.AWAITING_APPROVAL, participants__organisation__in=orgs)
        .exclude(approvals__organisation__in=orgs)
        .select_related("plan")
        .distinct()
    )
    return list(rounds)


def dashboard_for(user) -> dict:
    return {
        "is_admin": is_administrator(user),
        "is_auditor": is_auditor(user),
        "organisations": list(organisations_of(user)),
        "to_sign": agreements_to_sign(user),
        "to_approve": rounds_to_approve(user),
        "agreements": list(visible_agreements(user)[:20]),
        "live_rounds": list(visible_rounds(user).filter(status__in=TrainingRound.LIVE_STATES).select_related("plan")[:20]),
    }


# --- Web UI reads -------------------------------------------------------------------------------
#
# Every `*_for(user, ...)` below either returns what the user may see or raises NotFound, so a
# view never has to remember to scope a queryset. Budget figures come from the accounting app's
# selectors (the ledger is the one source of truth for spent epsilon); nothing here recomputes
# them.


def _get_visible(queryset, what: str, **lookup):
    from fedgov.errors import NotFound

    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise NotFound(f"{what} not found.")
    return obj


def agreement_for(user, pk: int) -> Agreement:
    return _get_visible(visible_agreements(user), "Agreement", pk=pk)


def dataset_for(user, slug: str):
    return _get_visible(access.visible_datasets(user).select_related("organisation", "agreement"), "Dataset", slug=slug)


def ledger_dataset_for(user, slug: str):
    """The dataset whose ledger (or audit bundle) `user` reads: 404 if they cannot see the
    dataset, 403 if they see it but may not read its ledger."""
    dataset = dataset_for(user, slug)
    access.require_ledger_reader(user, dataset)
    return dataset


def plan_for(user, pk: int):
    return _get_visible(access.visible_plans(user).select_related("agreement"), "Training plan", pk=pk)


def round_for(user, pk: int) -> TrainingRound:
    return _get_visible(visible_rounds(user).select_related("plan__agreement"), "Round", pk=pk)


def organisation_for(user, slug: str):
    return _get_visible(access.visible_organisations(user), "Organisation", slug=slug)


def organisation_list_for(user):
    from django.db.models import Count

    qs = access.visible_organisations(user)
    return qs.annotate(n_members=Count("memberships", distinct=True), n_datasets=Count("datasets", distinct=True))


def memberships_of(organisation):
    return Membership.objects.filter(organisation=organisation).select_related("user").order_by("user__username", "role")


def agreement_list_for(user, status: str | None = None):
    from django.db.models import Count

    qs = visible_agreements(user)
    if status:
        qs = qs.filter(status=status)
    return qs.annotate(n_parties=Count("party_links", distinct=True))


def agreement_parties(agreement: Agreement) -> list[dict]:
    """Each party with its signature of the current version and its exit status."""
    from .models import AgreementParty

    signatures = {
        s.organisation_id: s
        for s in AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).select_related("signed_by")
    }
    rows = []
    for link in AgreementParty.objects.filter(agreement=agreement).select_related("organisation").order_by("organisation__name"):
        rows.append(
            {
                "organisation": link.organisation,
                "link": link,
                "status": link.effective_status(),
                "signature": signatures.get(link.organisation_id),
            }
        )
    return rows


def events_for(user, *, agreement=None, kind: str | None = None):
    """The governance events `user` reads (`access.visible_events`), newest first."""
    qs = access.visible_events(user)
    if agreement is not None:
        qs = qs.filter(agreement=agreement)
    if kind:
        qs = qs.filter(kind=kind)
    return qs.select_related("agreement", "organisation", "round__plan")


def dataset_list_for(user):
    return access.visible_datasets(user).select_related("organisation", "agreement").order_by("organisation__name", "slug")


def plan_list_for(user):
    return access.visible_plans(user).select_related("agreement").order_by("-created_at")


def round_list_for(user, status: str | None = None):
    qs = visible_rounds(user).select_related("plan__agreement").order_by("-requested_at", "-id")
    if status:
        qs = qs.filter(status=status)
    return qs


# --- Budgets (through the accounting app's selectors) -----------------------------------------


def budget_of(dataset) -> dict:
    """A dataset's budget, spent and remaining epsilon, as the ledger says."""
    from accounting import selectors as acct

    summary = acct.dataset_budget_summary(dataset=dataset)
    return {
        "budget": float(summary["epsilon_budget"]),
        "spent": float(summary["epsilon_spent"]),
        "remaining": float(summary["epsilon_remaining"]),
        "entries": summary["entries"],
        "head_hash": summary["head_hash"],
        "open_reservations": summary["open_reservations"],
    }


def report_epsilons(round: TrainingRound) -> dict:
    """Epsilon per dataset slug from the round's stored report (dp_parameters details)."""
    from . import governance

    for check in (round.governance_report or {}).get("checks", []):
        if check.get("name") == governance.DP_PARAMETERS:
            return dict((check.get("details") or {}).get("epsilon_per_round") or {})
    return {}


def round_costs(round: TrainingRound) -> list[dict]:
    """For each dataset of the round: what one round costs, what was spent, what remains."""
    from . import governance

    per_round = report_epsilons(round)
    rows = []
    for dataset in round.participating_datasets().select_related("organisation"):
        cost = per_round.get(dataset.slug)
        if cost is None:
            cost = governance.round_epsilon(round.plan, dataset)
        figures = budget_of(dataset)
        rows.append(
            {
                "dataset": dataset,
                "cost": float(cost),
                **figures,
                "after": figures["remaining"] - float(cost),
                "fits": float(cost) <= figures["remaining"] + 1e-12,
            }
        )
    return rows


def round_reservations(round: TrainingRound) -> dict[str, str]:
    """dataset slug -> reserved | committed | released, from the round's ledger entries."""
    from accounting import selectors as acct

    return acct.round_reservation_state(round=round)


def plan_progress(plan) -> dict:
    completed = plan.rounds.filter(status=TrainingRound.Status.COMPLETED).count()
    return {"completed": completed, "total": plan.rounds_total, "remaining": max(plan.rounds_total - completed, 0)}


def report_checks(round: TrainingRound) -> list[dict]:
    return list((round.governance_report or {}).get("checks", []))


def round_decisions(round: TrainingRound) -> list[dict]:
    """Every organisation that decides on the round, with its decision if any."""
    from . import governance
    from .models import Organisation, RoundApproval

    orgs, needed = governance.required_approvers(round)
    decisions = {a.organisation_id: a for a in RoundApproval.objects.filter(round=round).select_related("decided_by")}
    return [
        {"organisation": org, "approval": decisions.get(org.pk)}
        for org in Organisation.objects.filter(pk__in=orgs).order_by("name")
    ]


def approvals_needed(round: TrainingRound) -> int:
    from . import governance

    return governance.required_approvers(round)[1]


def round_progress(round: TrainingRound, now=None) -> dict:
    """What the live round page shows: status, phase, who has answered, time left."""
    from django.utils import timezone

    from .models import RoundParticipant

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


def awaiting_signature(agreement: Agreement) -> list:
    """Parties that have not yet signed the current version."""
    return [row["organisation"] for row in agreement_parties(agreement) if row["signature"] is None and row["status"] != "exited"]


def admin_attention() -> dict:
    """What an administrator should look at: drafts, agreements still being signed, rounds
    blocked by governance, plans stopped."""
    from .models import TrainingPlan

    return {
        "drafts": list(Agreement.objects.filter(status=Agreement.Status.DRAFT)[:20]),
        "signing": [
            (a, awaiting_signature(a)) for a in Agreement.objects.filter(status=Agreement.Status.AWAITING_SIGNATURES)[:20]
        ],
        "blocked": list(
            TrainingRound.objects.filter(status=TrainingRound.Status.BLOCKED)
            .select_related("plan")
            .order_by("-requested_at")[:10]
        ),
        "stopped_plans": list(TrainingPlan.objects.filter(status=TrainingPlan.Status.STOPPED)[:10]),
    }


def audited_datasets(user):
    """Datasets of the agreements `user` audits, for the auditor's dashboard."""
    return access.audited_datasets(user).select_related("organisation", "agreement").order_by("slug")


# --- Ledgers ----------------------------------------------------------------------------------


def ledger_entries(dataset, *, kind: str | None = None, round_id: int | None = None):
    from accounting import selectors as acct

    qs = acct.ledger_entries(dataset=dataset).select_related("round__plan")
    if kind:
        qs = qs.filter(kind=kind)
    if round_id:
        qs = qs.filter(round_id=round_id)
    return qs


def ledger_series(dataset) -> list[dict]:
    """(time, epsilon spent after, budget in force) of every entry, for the epsilon plot."""
    from accounting import selectors as acct

    return list(
        acct.ledger_entries(dataset=dataset)
        .order_by("seq")
        .values("seq", "kind", "created_at", "epsilon_spent_after", "epsilon_budget", "round_id")
    )


def plan_series(plan) -> dict:
    """Per round of the plan: accuracy (model version or round metrics) and, per dataset, the
    epsilon the round charged and the cumulative epsilon spent after it (both from the
    ledger); `per_round` falls back to the governance report's estimate for a round that
    has not reserved yet."""
    from accounting import selectors as acct

    from .models import ModelVersion

    rounds = list(plan.rounds.order_by("number"))
    versions = {mv.round_id: mv for mv in ModelVersion.objects.filter(plan=plan, round__isnull=False)}
    accuracy = []
    for r in rounds:
        metrics = dict(r.metrics or {})
        mv = versions.get(r.pk)
        if mv is not None:
            metrics.update(mv.metrics or {})
        if metrics.get("accuracy") is not None or metrics.get("test_accuracy") is not None:
            accuracy.append(
                {
                    "number": r.number,
                    "accuracy": metrics.get("accuracy"),
                    "accuracy_interval": metrics.get("accuracy_interval"),
                    "test_accuracy": metrics.get("test_accuracy"),
                }
            )
    number_of = {r.pk: r.number for r in rounds}
    # Replay each dataset's chain once: a RESERVE of one of the plan's rounds charges the
    # difference between the spent epsilon before and after it (composition, so the
    # increment, not the round's stand-alone epsilon); a RELEASE gives the round back.
    spent: dict[str, dict[int, float]] = {}
    charged: dict[str, dict[int, float]] = {}
    previous: dict[str, float] = {}
    entries = (
        acct.ledger_entries()
        .filter(dataset__in=plan.datasets.all())
        .values_list("dataset_slug", "kind", "round_id", "epsilon_spent_after")
    )
    for slug, kind, round_id, after in entries.iterator():
        number = number_of.get(round_id)
        if number is not None:
            if kind == "RESERVE":
                charged.setdefault(slug, {})[number] = max(after - previous.get(slug, 0.0), 0.0)
                spent.setdefault(slug, {})[number] = after
            elif kind == "RELEASE":
                charged.get(slug, {}).pop(number, None)
                spent.get(slug, {}).pop(number, None)
        previous[slug] = after
    per_round = {}
    for r in rounds:
        eps = {slug: by_round[r.number] for slug, by_round in charged.items() if r.number in by_round}
        if not eps and r.status not in (TrainingRound.Status.BLOCKED, TrainingRound.Status.REJECTED):
            eps = report_epsilons(r)  # not charged yet: what the governance report says it will cost
        if eps:
            per_round[r.number] = eps
    return {"rounds": rounds, "accuracy": accuracy, "cumulative": spent, "charged": charged, "per_round": per_round}


def approval_items(user) -> list[tuple]:
    """(round, organisation) pairs waiting for this user's decision: one per organisation it
    represents whose data the round uses and which has not decided yet."""
    from .models import RoundApproval

    orgs = list(organisations_of(user, Membership.Role.REPRESENTATIVE))
    items = []
    for round in rounds_to_approve(user):
        involved = set(round.participants.values_list("organisation_id", flat=True))
        decided = set(RoundApproval.objects.filter(round=round).values_list("organisation_id", flat=True))
        items.extend((round, org) for org in orgs if org.pk in involved and org.pk not in decided)
    return items
