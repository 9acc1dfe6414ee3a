"""Read-side access rules of the API that `federation.permissions` does not spell out yet:
who reads a ledger, the governance history, a model's parameters; and which organisation a
representative acts for. Small querysets and guards, no domain logic; every write still goes
through a service, which checks again.
"""

from __future__ import annotations

import functools

from django.db import connections, router
from django.db.models import Q, QuerySet

from fedgov.errors import PermissionDenied, ValidationFailed

from ..models import (
    Agreement,
    AgreementParty,
    Dataset,
    GovernanceEvent,
    Membership,
    Organisation,
    TrainingPlan,
)
from ..permissions import (
    audits,
    is_administrator,
    is_auditor,
    is_representative_of,
    organisations_of,
    require_representative,
    visible_agreements,
)

MSG_LEDGER_FORBIDDEN = (
    "Only the administrators, the representatives of {organisation} and the auditors of its agreement read this ledger."
)
MSG_PARAMS_FORBIDDEN = "Only the parties to '{agreement}' may download its models' parameters."
MSG_CHOOSE_ORGANISATION = "You represent several organisations here ({choices}); say which one acts."
MSG_NOT_CANDIDATE = "{organisation} has no part in this; choose one of {choices}."


def visible_agreement_ids(user) -> list[int] | None:
    """Ids of `permissions.visible_agreements(user)`, read once per request (kept on the
    request's user object), or None for an administrator, who sees everything.

    Scoping rounds or datasets by this list (`agreement_id IN (...)`) selects the same rows as
    `permissions.visible_rounds` / `visible_datasets`, whose nested subqueries cost SQLite
    and Django's compiler several milliseconds per request on the hot read endpoints.
    tests/api/test_resources.py checks, for every role, that both select the same rows and
    that this list equals `permissions.visible_agreements`.
    """
    if is_administrator(user):
        return None
    cached = getattr(user, "_fedgov_visible_agreements", None)
    if cached is None:
        cached = _visible_agreement_ids(user) if user and user.is_authenticated else []
        if user is not None and user.is_authenticated:
            user._fedgov_visible_agreements = cached
    return cached


def _visible_agreement_ids(user) -> list[int]:
    """`visible_agreements(user)` (the agreements a party of which the user is a member of,
    and those the user audits) as one UNION of two index lookups: the same rows without
    visible_agreements' DISTINCT over joins.

    Hand-written SQL (from the models' own table and column names): the ORM's compiler took
    most of a millisecond to build this UNION on every request of every non-administrator."""
    connection = connections[router.db_for_read(AgreementParty)]
    with connection.cursor() as cursor:
        cursor.execute(_visible_agreements_sql(connection.alias), [user.pk, user.pk])
        return sorted({row[0] for row in cursor.fetchall()})


@functools.cache
def _visible_agreements_sql(alias: str) -> str:
    qn = connections[alias].ops.quote_name
    party, membership = AgreementParty._meta, Membership._meta
    auditors = Agreement.auditors.through._meta

    def col(meta, name: str) -> str:
        return qn(meta.get_field(name).column)

    return (
        f"SELECT p.{col(party, 'agreement')} FROM {qn(party.db_table)} p"
        f" INNER JOIN {qn(membership.db_table)} m ON m.{col(membership, 'organisation')} = p.{col(party, 'organisation')}"
        f" WHERE m.{col(membership, 'user')} = %s"
        f" UNION SELECT a.{col(auditors, 'agreement')} FROM {qn(auditors.db_table)} a WHERE a.{col(auditors, 'user')} = %s"
    )


def scope_to_visible_agreements(queryset: QuerySet, user, agreement_field: str) -> QuerySet:
    ids = visible_agreement_ids(user)
    return queryset if ids is None else queryset.filter(**{f"{agreement_field}__in": ids})


def visible_organisations(user) -> QuerySet[Organisation]:
    """Administrators see every organisation; others their own and the parties of the
    agreements they can see."""
    if is_administrator(user):
        return Organisation.objects.all()
    if not user or not user.is_authenticated:
        return Organisation.objects.none()
    parties = AgreementParty.objects.filter(agreement__in=visible_agreements(user)).values("organisation_id")
    return Organisation.objects.filter(Q(id__in=organisations_of(user).values("id")) | Q(id__in=parties))


def visible_memberships(user) -> QuerySet[Membership]:
    if is_administrator(user):
        return Membership.objects.all()
    if not user or not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.filter(user=user)


def audited_agreements(user, *, governance: bool = False) -> QuerySet[Agreement]:
    """Agreements `user` audits (as a member of the auditors group); with `governance`, only
    those whose terms give the auditor the governance history as well as the ledgers."""
    if not is_auditor(user):
        return Agreement.objects.none()
    agreements = Agreement.objects.filter(auditors=user)
    if governance:
        agreements = agreements.filter(auditor_access=Agreement.AuditorAccess.LEDGER_AND_GOVERNANCE)
    return agreements


def ledger_datasets(user) -> QuerySet[Dataset]:
    """Datasets whose budget ledger `user` reads: administrators every one, auditors those of
    the agreements they audit, representatives their own organisations'."""
    if is_administrator(user):
        return Dataset.objects.all()
    if not user or not user.is_authenticated:
        return Dataset.objects.none()
    represented = organisations_of(user, Membership.Role.REPRESENTATIVE).values("id")
    return Dataset.objects.filter(Q(agreement__in=audited_agreements(user).values("id")) | Q(organisation_id__in=represented))


def require_ledger_reader(user, dataset: Dataset) -> None:
    """The same rule as `ledger_datasets`, for one dataset, with the cheap checks first."""
    if is_administrator(user):
        return
    if audits(user, dataset.agreement) or is_representative_of(user, dataset.organisation):
        return
    raise PermissionDenied(MSG_LEDGER_FORBIDDEN.format(organisation=dataset.organisation.name))


def visible_events(user) -> QuerySet[GovernanceEvent]:
    """The governance history: administrators all of it; the auditors of an agreement (when
    its terms grant them the governance history) and its parties' representatives that
    agreement's events."""
    if is_administrator(user):
        return GovernanceEvent.objects.all()
    if not user or not user.is_authenticated:
        return GovernanceEvent.objects.none()
    represented = organisations_of(user, Membership.Role.REPRESENTATIVE).values("id")
    as_party = AgreementParty.objects.filter(organisation_id__in=represented).values("agreement_id")
    return GovernanceEvent.objects.filter(
        Q(agreement_id__in=as_party) | Q(agreement_id__in=audited_agreements(user, governance=True).values("id"))
    )


def require_party_member(user, plan: TrainingPlan) -> None:
    """A model's parameters go to the parties of the plan's agreement only: a member (any
    role) of an organisation that is a party and has not exited."""
    parties = [
        link.organisation_id
        for link in AgreementParty.objects.filter(agreement_id=plan.agreement_id)
        if link.effective_status() != AgreementParty.Status.EXITED
    ]
    if not organisations_of(user).filter(id__in=parties).exists():
        raise PermissionDenied(MSG_PARAMS_FORBIDDEN.format(agreement=plan.agreement.title))


def acting_organisation(
    user, *, candidates: list[Organisation], given: Organisation | None, agreement: Agreement, action: str
) -> Organisation:
    """The organisation a representative acts for: the one named in the request, or the one
    candidate they represent. Someone who represents none of them gets the service guard's
    own answer (404 if they cannot see the agreement, 403 otherwise)."""
    choices = ", ".join(o.slug for o in candidates) or "none"
    if given is not None:
        if given.pk not in {o.pk for o in candidates}:
            message = MSG_NOT_CANDIDATE.format(organisation=given.name, choices=choices)
            raise ValidationFailed(message, fields={"organisation": [message]})
        return given
    mine = set(organisations_of(user, Membership.Role.REPRESENTATIVE).values_list("id", flat=True))
    represented = [o for o in candidates if o.pk in mine]
    if len(represented) == 1:
        return represented[0]
    if len(represented) > 1:
        message = MSG_CHOOSE_ORGANISATION.format(choices=", ".join(o.slug for o in represented))
        raise ValidationFailed(message, fields={"organisation": [message]})
    if not candidates:
        raise ValidationFailed(MSG_NOT_CANDIDATE.format(organisation="Nobody", choices=choices))
    # Not a representative of any candidate: the guard says 404 or 403, as the service would.
    require_representative(user, organisation=candidates[0], agreement=agreement, action=action)
    return candidates[0]  # unreachable: the guard raised
