"""Who may see what and who may do what: the one place (ARCHITECTURE.md, Conventions 8).

Every "visible X" queryset and every "may act" guard of the web UI, the API, the selectors
and the services is here; nothing else decides an access rule.

Site-wide roles are groups (administrators, auditors); per-organisation roles are
`Membership`s. The roles:

* an administrator sees everything and administers it;
* a member of an organisation sees the agreements its organisation is a party to, and their
  datasets, plans, rounds and model versions; only a *representative* acts for it (signs,
  approves, requests rounds, raises budgets, gives exit notice), reads its datasets'
  ledgers and the governance history of its agreements;
* an auditor sees the agreements it audits (read-only), reads their datasets' ledgers and
  audit bundles, and their governance history when the agreement's terms grant it.

Someone with no relation to an object gets NotFound (its existence is not revealed); someone
who may see it but not do this gets PermissionDenied naming the rule.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from fedgov.errors import NotFound, PermissionDenied, ValidationFailed

from . import visibility_cache
from .models import (
    ADMINISTRATORS_GROUP,
    AUDITORS_GROUP,
    Agreement,
    AgreementParty,
    Dataset,
    GovernanceEvent,
    Membership,
    ModelVersion,
    Organisation,
    TrainingPlan,
    TrainingRound,
)

MSG_NOT_FOUND = "{what} not found."
MSG_READ_ONLY = "Your role lets you see this {what} but not {action} it."
MSG_NOT_REPRESENTATIVE = "You are not a representative of {organisation}; only its representatives can {action}."
MSG_LEDGER_FORBIDDEN = (
    "Only the administrators, the representatives of {organisation} and the auditors of its agreement read this ledger."
)
MSG_HISTORY_FORBIDDEN = (
    "Only the administrators, the parties' representatives and (when its terms say so) the auditors of "
    "'{agreement}' read its governance history."
)
MSG_PARAMS_FORBIDDEN = "Only the parties to '{agreement}' may download its models' parameters."
MSG_BUDGET_FORBIDDEN = "Your role lets you see this dataset but not change its budget."
MSG_ROUND_REQUEST_FORBIDDEN = "Only an administrator or a representative of a participating organisation can request rounds."
MSG_CHOOSE_ORGANISATION = "You represent several organisations here ({choices}); say which one acts."
MSG_NOT_CANDIDATE = "{organisation} has no part in this; choose one of {choices}."


# --- Roles ------------------------------------------------------------------------------------

ROLE_GROUPS = (ADMINISTRATORS_GROUP, AUDITORS_GROUP)


def _authenticated(user) -> bool:
    return bool(user is not None and user.is_authenticated)


def remember_role_groups(user, names) -> None:
    """Keep on `user` which of ROLE_GROUPS it belongs to, when the caller already read them
    (the API's token authentication reads them in the query that finds the token)."""
    user._fedgov_groups = {name for name in names if name in ROLE_GROUPS}


def _in_group(user, name: str) -> bool:
    if not _authenticated(user):
        return False
    cache = getattr(user, "_fedgov_groups", None)
    if cache is None:
        remember_role_groups(user, user.groups.filter(name__in=ROLE_GROUPS).values_list("name", flat=True))
        cache = user._fedgov_groups
    return name in cache


def is_administrator(user) -> bool:
    return _authenticated(user) and (user.is_superuser or _in_group(user, ADMINISTRATORS_GROUP))


def is_auditor(user) -> bool:
    return _in_group(user, AUDITORS_GROUP)


def organisations_of(user, role: str | None = None) -> QuerySet[Organisation]:
    """The organisations `user` is a member of (with `role`, in that role)."""
    if not _authenticated(user):
        return Organisation.objects.none()
    memberships = Membership.objects.filter(user=user)
    if role:
        memberships = memberships.filter(role=role)
    return Organisation.objects.filter(id__in=memberships.values("organisation_id"))


def represented_organisations(user) -> QuerySet[Organisation]:
    return organisations_of(user, Membership.Role.REPRESENTATIVE)


def is_representative_of(user, organisation: Organisation) -> bool:
    if not _authenticated(user):
        return False
    return Membership.objects.filter(user=user, organisation=organisation, role=Membership.Role.REPRESENTATIVE).exists()


def is_member(user) -> bool:
    return _authenticated(user) and Membership.objects.filter(user=user).exists()


# --- Visible agreements: one UNION query ------------------------------------------------------


def _visible_agreements_subquery(user) -> QuerySet:
    """Ids of the agreements a party of which the user is a member of, and of those the user
    audits: one UNION of two index lookups (no DISTINCT over joins)."""
    parties = AgreementParty.objects.filter(organisation__memberships__user_id=user.pk).values_list("agreement_id", flat=True)
    audited = Agreement.auditors.through.objects.filter(user_id=user.pk).values_list("agreement_id", flat=True)
    return parties.union(audited)


def _visible_agreement_ids(user) -> list[int]:
    return sorted(set(_visible_agreements_subquery(user)))


def visible_agreement_ids(user, *, cached: bool = False) -> list[int] | None:
    """Ids of `visible_agreements(user)`, or None for an administrator, who sees everything.

    With `cached` (the API: one user object per request) the list is read once per request
    and kept on the user object, and between requests in the shared cache
    (federation/visibility_cache.py, stale at once when a membership, party or auditor changes); scoping datasets or rounds by the list (`agreement_id IN
    (...)`) is then one cheap lookup per query."""
    if is_administrator(user):
        return None
    if not _authenticated(user):
        return []
    if not cached:
        return _visible_agreement_ids(user)
    ids = getattr(user, "_fedgov_visible_agreements", None)
    if ids is None:
        ids = user._fedgov_visible_agreements = visibility_cache.visible_ids(user.pk, lambda: _visible_agreement_ids(user))
    return ids


def scope_to_visible_agreements(queryset: QuerySet, user, agreement_field: str, *, cached: bool = False) -> QuerySet:
    """`queryset` narrowed to rows whose `agreement_field` is an agreement `user` sees.

    Without `cached`, the UNION is a subquery of the one query (every caller that keeps a
    user object across changes, such as services and the web UI, sees the current state);
    with it, the per-request list of ids (see `visible_agreement_ids`)."""
    if is_administrator(user):
        return queryset
    if not _authenticated(user):
        return queryset.none()
    if cached:
        return queryset.filter(**{f"{agreement_field}__in": visible_agreement_ids(user, cached=True)})
    return queryset.filter(**{f"{agreement_field}__in": _visible_agreements_subquery(user)})


# --- Visibility --------------------------------------------------------------------------------


def visible_agreements(user) -> QuerySet[Agreement]:
    return scope_to_visible_agreements(Agreement.objects.all(), user, "id")


def visible_datasets(user, *, cached: bool = False) -> QuerySet[Dataset]:
    return scope_to_visible_agreements(Dataset.objects.all(), user, "agreement_id", cached=cached)


def visible_plans(user, *, cached: bool = False) -> QuerySet[TrainingPlan]:
    return scope_to_visible_agreements(TrainingPlan.objects.all(), user, "agreement_id", cached=cached)


def visible_rounds(user, *, cached: bool = False) -> QuerySet[TrainingRound]:
    return scope_to_visible_agreements(TrainingRound.objects.all(), user, "plan__agreement_id", cached=cached)


def visible_model_versions(user, *, cached: bool = False) -> QuerySet[ModelVersion]:
    return scope_to_visible_agreements(ModelVersion.objects.all(), user, "plan__agreement_id", cached=cached)


def can_see_agreement(user, agreement: Agreement) -> bool:
    return visible_agreements(user).filter(pk=agreement.pk).exists()


def visible_organisations(user) -> QuerySet[Organisation]:
    """Administrators see every organisation; others their own and the parties of the
    agreements they can see."""
    if is_administrator(user):
        return Organisation.objects.all()
    if not _authenticated(user):
        return Organisation.objects.none()
    parties = AgreementParty.objects.filter(agreement_id__in=_visible_agreements_subquery(user)).values("organisation_id")
    return Organisation.objects.filter(Q(id__in=organisations_of(user).values("id")) | Q(id__in=parties))


def visible_memberships(user) -> QuerySet[Membership]:
    """Administrators see every membership; others their own."""
    if is_administrator(user):
        return Membership.objects.all()
    if not _authenticated(user):
        return Membership.objects.none()
    return Membership.objects.filter(user=user)


def may_see_members(user, organisation: Organisation) -> bool:
    """Who sees an organisation's list of people: administrators and its own members."""
    return is_administrator(user) or organisations_of(user).filter(pk=organisation.pk).exists()


def agent_organisations(user) -> QuerySet[Organisation]:
    """Whose partner agents `user` sees (enrolment, last poll, version, terms, refusals):
    administrators every organisation's, a representative its own organisations'."""
    if is_administrator(user):
        return Organisation.objects.all()
    return represented_organisations(user)


def may_see_agent(user, organisation: Organisation) -> bool:
    return is_administrator(user) or is_representative_of(user, organisation)


# --- Auditors, ledgers, bundles ------------------------------------------------------------------


def audits(user, agreement: Agreement) -> bool:
    return _audits(user, agreement.pk)


def _audits(user, agreement_id: int) -> bool:
    # The through table alone (no join to the user table, no related manager to build):
    # the API's ledger reads ask this on every request.
    return is_auditor(user) and Agreement.auditors.through.objects.filter(agreement_id=agreement_id, user_id=user.pk).exists()


def audited_agreements(user, *, governance: bool = False) -> QuerySet[Agreement]:
    """Agreements `user` audits (as a member of the auditors group); with `governance`, only
    those whose terms give the auditor the governance history as well as the ledgers."""
    if not is_auditor(user):
        return Agreement.objects.none()
    agreements = Agreement.objects.filter(auditors=user)
    if governance:
        agreements = agreements.filter(auditor_access=Agreement.AuditorAccess.LEDGER_AND_GOVERNANCE)
    return agreements


def audited_datasets(user) -> QuerySet[Dataset]:
    """Datasets of the agreements `user` audits (the auditor's dashboard)."""
    return Dataset.objects.filter(agreement__in=audited_agreements(user).values("id"))


def ledger_datasets(user) -> QuerySet[Dataset]:
    """Datasets whose budget ledger (and audit bundle) `user` reads: administrators every one,
    auditors those of the agreements they audit, representatives their own organisations'."""
    if is_administrator(user):
        return Dataset.objects.all()
    if not _authenticated(user):
        return Dataset.objects.none()
    represented = represented_organisations(user).values("id")
    return Dataset.objects.filter(Q(agreement__in=audited_agreements(user).values("id")) | Q(organisation_id__in=represented))


def may_read_ledger(user, dataset: Dataset) -> bool:
    """The rule of `ledger_datasets`, for one dataset, with the cheap checks first."""
    if is_administrator(user) or _audits(user, dataset.agreement_id):
        return True
    return (
        _authenticated(user)
        and Membership.objects.filter(
            user=user, organisation_id=dataset.organisation_id, role=Membership.Role.REPRESENTATIVE
        ).exists()
    )


def require_ledger_reader(user, dataset: Dataset) -> None:
    """Reading a ledger, verifying it, downloading its audit bundle: `may_read_ledger`.
    The caller has already answered 404 to whoever cannot see the dataset."""
    if not may_read_ledger(user, dataset):
        raise PermissionDenied(MSG_LEDGER_FORBIDDEN.format(organisation=dataset.organisation.name))


# --- Governance history ------------------------------------------------------------------------


def history_agreements(user) -> QuerySet[Agreement]:
    """Agreements whose governance history `user` reads: administrators every one; the
    representatives of a party; its auditors when its terms grant them the history."""
    if is_administrator(user):
        return Agreement.objects.all()
    if not _authenticated(user):
        return Agreement.objects.none()
    as_party = AgreementParty.objects.filter(organisation_id__in=represented_organisations(user).values("id"))
    return Agreement.objects.filter(
        Q(id__in=as_party.values("agreement_id")) | Q(id__in=audited_agreements(user, governance=True).values("id"))
    )


def visible_events(user) -> QuerySet[GovernanceEvent]:
    """The governance events of `history_agreements(user)` (every event names its agreement)."""
    if is_administrator(user):
        return GovernanceEvent.objects.all()
    if not _authenticated(user):
        return GovernanceEvent.objects.none()
    return GovernanceEvent.objects.filter(agreement_id__in=history_agreements(user).values("id"))


def may_read_history(user, agreement: Agreement) -> bool:
    return is_administrator(user) or history_agreements(user).filter(pk=agreement.pk).exists()


def require_history_reader(user, agreement: Agreement) -> None:
    """404 for whoever cannot see the agreement, 403 for whoever sees it but not its history."""
    if may_read_history(user, agreement):
        return
    if not can_see_agreement(user, agreement):
        raise NotFound(MSG_NOT_FOUND.format(what="Agreement"))
    raise PermissionDenied(MSG_HISTORY_FORBIDDEN.format(agreement=agreement.title))


# --- May act -----------------------------------------------------------------------------------


def require_administrator(user, *, what: str, action: str) -> None:
    if is_administrator(user):
        return
    if _authenticated(user) and (is_auditor(user) or is_member(user)):
        raise PermissionDenied(MSG_READ_ONLY.format(what=what, action=action))
    raise NotFound(MSG_NOT_FOUND.format(what=what.capitalize()))


def require_representative(
    user: AbstractBaseUser, *, organisation: Organisation, agreement: Agreement, action: str, allow_admin: bool = False
) -> None:
    """`user` must represent `organisation` (a party to `agreement`): signing, approving or
    rejecting rounds, giving exit notice, standing approvals, registering datasets.

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


def representative_parties(user, agreement: Agreement) -> QuerySet[Organisation]:
    """The parties of `agreement` that `user` represents (who signs, who gives exit notice)."""
    return agreement.parties.filter(pk__in=represented_organisations(user)).order_by("name")


def may_change_budget(user, dataset: Dataset) -> bool:
    return is_administrator(user) or is_representative_of(user, dataset.organisation)


def require_budget_changer(user, dataset: Dataset) -> None:
    if not may_change_budget(user, dataset):
        raise PermissionDenied(MSG_BUDGET_FORBIDDEN)


def may_request_round(user, plan: TrainingPlan) -> bool:
    if is_administrator(user):
        return True
    represented = represented_organisations(user).values("id")
    return plan.datasets.filter(organisation_id__in=represented).exists()


def require_round_requester(user, plan: TrainingPlan) -> None:
    """404 for whoever cannot see the plan, 403 for whoever sees it but is no administrator
    nor a representative of an organisation whose dataset the plan uses."""
    if not visible_plans(user).filter(pk=plan.pk).exists():
        raise NotFound(MSG_NOT_FOUND.format(what="Training plan"))
    if not may_request_round(user, plan):
        raise PermissionDenied(MSG_ROUND_REQUEST_FORBIDDEN)


def round_deciders(user, round: TrainingRound) -> list[Organisation]:
    """The organisations whose data `round` uses that `user` represents (who approves it)."""
    involved = round.participants.values("organisation_id")
    return list(represented_organisations(user).filter(id__in=involved).order_by("name"))


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
    mine = set(represented_organisations(user).values_list("id", flat=True))
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
