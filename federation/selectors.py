"""Reads, scoped to what the user may see (STYLE.md 1)."""

from __future__ import annotations

from .models import Agreement, AgreementSignature, Membership, TrainingRound
from .permissions import is_administrator, is_auditor, organisations_of, visible_agreements, visible_rounds


def agreements_to_sign(user):
    """Agreements awaiting signature from an organisation this user represents."""
    orgs = organisations_of(user, Membership.Role.REPRESENTATIVE)
    pending = []
    for agreement in Agreement.objects.filter(status=Agreement.Status.AWAITING_SIGNATURES, parties__in=orgs).distinct():
        signed = set(
            AgreementSignature.objects.filter(agreement=agreement, version=agreement.version).values_list("organisation_id", flat=True)
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
