"""The dashboard and the inbox: what waits for the user, and (administrators) what needs care."""

from __future__ import annotations

from .. import access
from ..models import Agreement, TrainingPlan, TrainingRound
from .agreements import agreements_to_sign, awaiting_signature
from .datasets import audited_datasets
from .rounds import approval_items, rounds_to_approve


def dashboard_for(*, user) -> dict:
    is_admin, is_auditor = access.is_administrator(user), access.is_auditor(user)
    context = {
        "is_admin": is_admin,
        "is_auditor": is_auditor,
        "organisations": list(access.organisations_of(user)),
        "to_sign": agreements_to_sign(user=user),
        "to_approve": rounds_to_approve(user=user),
        "agreements": list(access.visible_agreements(user)[:20]),
        "live_rounds": list(access.visible_rounds(user).filter(status__in=TrainingRound.LIVE_STATES).select_related("plan")[:20]),
        "to_decide": approval_items(user=user),
    }
    if is_admin:
        context["admin"] = admin_attention()
    if is_auditor:
        context["audited_datasets"] = list(audited_datasets(user=user))
    return context


def inbox_for(*, user) -> dict:
    return {
        "to_sign": agreements_to_sign(user=user),
        "to_approve": approval_items(user=user),
        "representative": access.represented_organisations(user).exists(),
    }


def admin_attention() -> dict:
    """What an administrator should look at: drafts, agreements still being signed, rounds
    blocked by governance, plans stopped."""
    return {
        "drafts": list(Agreement.objects.filter(status=Agreement.Status.DRAFT)[:20]),
        "signing": [
            (a, awaiting_signature(agreement=a))
            for a in Agreement.objects.filter(status=Agreement.Status.AWAITING_SIGNATURES)[:20]
        ],
        "blocked": list(
            TrainingRound.objects.filter(status=TrainingRound.Status.BLOCKED)
            .select_related("plan")
            .order_by("-requested_at")[:10]
        ),
        "stopped_plans": list(TrainingPlan.objects.filter(status=TrainingPlan.Status.STOPPED)[:10]),
    }
