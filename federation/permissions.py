"""Who may do what (ARCHITECTURE.md, Conventions 8).

Site-wide roles are groups (administrators, auditors); per-organisation roles are
`Membership`s. The rule everywhere: someone with no relation to an object gets NotFound (the
object's existence is not revealed), someone who may see it but not change it gets
PermissionDenied.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from fedgov.errors import NotFound, PermissionDenied

from .models import (
    ADMINISTRATORS_GROUP,
    AUDITORS_GROUP,
    Agreement,
    Dataset,
    Membership,
    Organisation,
    TrainingPlan,
    TrainingRound,
)

MSG_NOT_FOUND = "{what} not found."
MSG_READ_ONLY = "Your role lets you see this {what} but not {action} it."
MSG_NOT_REPRESENTATIVE = "You are not a representative of {organisation}; only its representatives can {action}."


ROLE_GROUPS = (ADMINISTRATORS_GROUP, AUDITORS_GROUP)


def remember_role_groups(user, names) -> None:
    """Keep on `user` which of ROLE_GROUPS it belongs to, when the caller already read them
    (the API's token authentication reads them in the query that finds the token)."""
    user._fedgov_groups = {name for name in names if name in ROLE_GROUPS}


def _in_group(user, name: str) -> bool:
    if not user or not user.is_authenticated:
        return False
    cache = getattr(user, "_fedgov_groups", None)
    if cache is None:
        remember_role_groups(user, user.groups.filter(name__in=ROLE_GROUPS).values_list("name", flat=True))
        cache = user._fedgov_groups
    return name in cache


def is_administrator(user) -> bool:
    return bool(user and user.is_authenticated and (user.is_superuser or _in_group(user, ADMINISTRATORS_GROUP)))


def is_auditor(user) -> bool:
    return _in_group(user, AUDITORS_GROUP)


def organisations_of(user, role: str | None = None) -> QuerySet[Organisation]:
    if not user or not user.is_authenticated:
        return Organisation.objects.none()
    memberships = Membership.objects.filter(user=user)
    if role:
        memberships = memberships.filter(role=role)
    return Organisation.objects.filter(id__in=memberships.values("organisation_id"))


def is_representative_of(user, organisation: Organisation) -> bool:
    if not user or not user.is_authenticated:
        return False
    return Membership.objects.filter(user=user, organisation=organisation, role=Membership.Role.REPRESENTATIVE).exists()


# --- Visibility (selectors use these to scope querysets) -------------------------------------


def visible_agreements(user) -> QuerySet[Agreement]:
    if is_administrator(user):
        return Agreement.objects.all()
    if not user or not user.is_authenticated:
        return Agreement.objects.none()
    return Agreement.objects.filter(Q(parties__in=organisations_of(user)) | Q(auditors=user)).distinct()


def visible_datasets(user) -> QuerySet[Dataset]:
    if is_administrator(user):
        return Dataset.objects.all()
    return Dataset.objects.filter(agreement__in=visible_agreements(user))


def visible_plans(user) -> QuerySet[TrainingPlan]:
    if is_administrator(user):
        return TrainingPlan.objects.all()
    return TrainingPlan.objects.filter(agreement__in=visible_agreements(user))


def visible_rounds(user) -> QuerySet[TrainingRound]:
    if is_administrator(user):
        return TrainingRound.objects.all()
    return TrainingRound.objects.filter(plan__agreement__in=visible_agreements(user))


def can_see_agreement(user, agreement: Agreement) -> bool:
    return visible_agreements(user).filter(pk=agreement.pk).exists()


def audits(user, agreement: Agreement) -> bool:
    # The through table alone (no join to the user table, no related manager to build):
    # the API's ledger reads ask this on every request.
    return is_auditor(user) and Agreement.auditors.through.objects.filter(agreement_id=agreement.pk, user_id=user.pk).exists()


# --- Guards used by services ----------------------------------------------------------------


def require_administrator(user, *, what: str, action: str) -> None:
    if is_administrator(user):
        return
    if user and user.is_authenticated and (is_auditor(user) or Membership.objects.filter(user=user).exists()):
        raise PermissionDenied(MSG_READ_ONLY.format(what=what, action=action))
    raise NotFound(MSG_NOT_FOUND.format(what=what.capitalize()))


def require_representative(
    user: AbstractBaseUser, *, organisation: Organisation, agreement: Agreement, action: str, allow_admin: bool = False
) -> None:
    """`user` must represent `organisation` (a party to `agreement`).

    Someone who cannot see the agreement at all gets NotFound; someone who can (an auditor,
    a representative of another party, an agent) gets PermissionDenied naming the rule.
    """
    if allow_admin and is_administrator(user):
        return
    if is_representative_of(user, organisation):
        return
    if not can_see_agreement(user, agreement):
        raise NotFound(MSG_NOT_FOUND.format(what="Agreement"))
    raise PermissionDenied(MSG_NOT_REPRESENTATIVE.format(organisation=organisation.name, action=action))
