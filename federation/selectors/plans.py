"""Training plans: what a user sees, their progress and their epsilon and accuracy series."""

from __future__ import annotations

from django.db.models import QuerySet

from .. import access
from ..models import ModelVersion, TrainingPlan, TrainingRound
from .common import get_visible
from .rounds import plan_progress, report_epsilons


def plan_for(*, user, pk: int) -> TrainingPlan:
    return get_visible(access.visible_plans(user).select_related("agreement"), what="Training plan", pk=pk)


def plans_for(*, user) -> QuerySet[TrainingPlan]:
    """The API's plans: what `user` sees, with their datasets prefetched."""
    return access.visible_plans(user).prefetch_related("datasets")


def plan_list_for(*, user) -> QuerySet[TrainingPlan]:
    return access.visible_plans(user).select_related("agreement").order_by("-created_at")


def plan_rows_for(*, user) -> list[dict]:
    """The plan list page: each plan the user sees with its progress."""
    return [{"plan": p, **plan_progress(plan=p)} for p in plan_list_for(user=user)]



def plan_page(*, user, plan: TrainingPlan) -> dict:
    """The plan page: progress, datasets, the series, whether the user may request a round
    (`access.may_request_round`) or pause and resume it (an administrator or a representative
    of a party with a dataset in it), and its standing approvals."""
    my_orgs = list(access.represented_organisations(user).filter(id__in=plan.datasets.values("organisation_id")))
    series = plan_series(plan=plan)
    return {
        "plan": plan,
        "progress": plan_progress(plan=plan),
        "datasets": plan.datasets.select_related("organisation"),
        "series": series,
        "rounds": series["rounds"],
        "can_request": plan.status == TrainingPlan.Status.ACTIVE and access.may_request_round(user, plan),
        "can_steer": access.is_administrator(user) or bool(my_orgs),
        "standing_orgs": my_orgs,
        "standing": plan.standing_approvals.select_related("organisation").order_by("-given_at"),
    }


def plan_series(*, plan) -> dict:
    """Per round of the plan: accuracy (model version or round metrics) and, per dataset, the
    epsilon the round charged and the cumulative epsilon spent after it (both from the
    ledger); `per_round` falls back to the governance report's estimate for a round that
    has not reserved yet."""
    from accounting import selectors as acct


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
            eps = report_epsilons(round=r)  # not charged yet: what the governance report says it will cost
        if eps:
            per_round[r.number] = eps
    return {"rounds": rounds, "accuracy": accuracy, "cumulative": spent, "charged": charged, "per_round": per_round}


def standing_target(*, user, pk: int, org_slug: str) -> tuple:
    """The plan and the party organisation a standing approval is given for: 404 for the plan
    or an organisation that is not a party, 403 for whoever does not represent it."""
    from .agreements import party_of

    plan = plan_for(user=user, pk=pk)
    org = party_of(agreement=plan.agreement, slug=org_slug)
    access.require_representative(user, organisation=org, agreement=plan.agreement, action="give standing approvals")
    return plan, org
