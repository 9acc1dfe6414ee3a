"""Writes for organisations and memberships (administrator only)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from fedgov.errors import InvalidState, ValidationFailed

from ..access import require_administrator
from ..i18n import in_english
from ..models import Agreement, AgreementParty, ApiToken, GovernanceEvent, Membership, Organisation
from .common import event_record, validated
from .tokens import token_revoke

User = get_user_model()


@transaction.atomic
def organisation_create(*, actor, slug: str, name: str, kind: str = Organisation.Kind.OTHER) -> Organisation:
    require_administrator(actor, what="organisation", action="create")
    organisation = Organisation(slug=slug, name=name, kind=kind)
    validated(organisation)
    organisation.save()
    return organisation


@transaction.atomic
def membership_add(*, actor, user, organisation: Organisation, role: str) -> Membership:
    require_administrator(actor, what="membership", action="create")
    if role not in Membership.Role.values:
        raise ValidationFailed(f"Unknown role {role!r}; expected one of {', '.join(Membership.Role.values)}.")
    membership = Membership(user=user, organisation=organisation, role=role)
    validated(membership)
    membership.save()
    return membership



@transaction.atomic
def member_register(
    *,
    actor,
    organisation: Organisation,
    role: str,
    username: str,
    password: str,
    email: str = "",
    first_name: str = "",
    last_name: str = "",
) -> Membership:
    """A new person at an organisation: their user account and its membership, in one
    transaction, so a refused membership leaves no orphan account behind."""
    require_administrator(actor, what="membership", action="create")
    person = User.objects.create_user(
        username=username, password=password, email=email, first_name=first_name, last_name=last_name
    )
    return membership_add(actor=actor, user=person, organisation=organisation, role=role)


MSG_LAST_REPRESENTATIVE = (
    "{user} is the last representative of {organisation}, a party to {agreements}: nobody would be left to "
    "sign, approve rounds or give exit notice. Add another representative first."
)
MSG_MEMBER_REMOVED = "{user} is no longer {role} of {organisation} (removed by {actor})."

# Agreements in these states still need a party's representative to act.
LIVE_AGREEMENT_STATUSES = (Agreement.Status.AWAITING_SIGNATURES, Agreement.Status.ACTIVE, Agreement.Status.SUSPENDED)


class LastRepresentative(InvalidState):
    """Removing this membership would leave a party to a live agreement without anyone to act for it."""

    code = "last_representative"


@transaction.atomic
def membership_remove(*, actor, membership: Membership) -> None:
    """Remove a user's role at an organisation (administrators only).

    Refused (LastRepresentative) when it is the organisation's last representative while the
    organisation is a party, not exited, to an agreement awaiting signatures, active or
    suspended: that agreement could no longer be signed, approved or exited. Removing an agent
    membership revokes the user's agent-scoped API tokens (when no other agent role is left), so
    a removed machine stops at once. Every removal is a governance event on each agreement the
    organisation is a party to (its parties and auditors read it there), or on the organisation
    alone when there is none.
    """
    require_administrator(actor, what="membership", action="remove")
    # The organisation's row serialises removals: two administrators removing its last two
    # representatives at once would each count the other and leave none.
    organisation = Organisation.objects.select_for_update().get(pk=membership.organisation_id)
    membership = Membership.objects.select_related("user").filter(pk=membership.pk).first()
    if membership is None:
        return  # already removed: removal is idempotent
    user = membership.user
    links = AgreementParty.objects.filter(organisation=organisation).select_related("agreement")
    if membership.role == Membership.Role.REPRESENTATIVE:
        others = Membership.objects.filter(organisation=organisation, role=Membership.Role.REPRESENTATIVE).exclude(
            pk=membership.pk
        )
        live = sorted(
            link.agreement.title
            for link in links
            if link.agreement.status in LIVE_AGREEMENT_STATUSES and link.effective_status() != AgreementParty.Status.EXITED
        )
        if live and not others.exists():
            raise LastRepresentative(
                MSG_LAST_REPRESENTATIVE.format(
                    user=user.username, organisation=organisation.name, agreements=", ".join(repr(t) for t in live)
                ),
                organisation=organisation.slug,
                agreements=live,
            )
    role = in_english(membership.get_role_display()).lower()
    membership.delete()
    revoked: list[str] = []
    if membership.role == Membership.Role.AGENT and not Membership.objects.filter(user=user, role=Membership.Role.AGENT).exists():
        agent_tokens = [
            t for t in ApiToken.objects.filter(user=user, revoked_at__isnull=True) if ApiToken.Scope.AGENT in t.scopes
        ]
        for token in agent_tokens:
            token_revoke(actor=actor, token=token)  # and any token minted from it
        revoked = [t.prefix for t in agent_tokens]
    message = MSG_MEMBER_REMOVED.format(
        user=user.username, role=role, organisation=organisation.name, actor=getattr(actor, "username", "system")
    )
    details = {"user": user.username, "role": membership.role, "revoked_tokens": revoked}
    agreements = sorted({link.agreement for link in links}, key=lambda a: a.pk)
    for agreement in agreements or [None]:
        event_record(
            kind=GovernanceEvent.Kind.MEMBER_REMOVED,
            message=message,
            actor=actor,
            agreement=agreement,
            organisation=organisation,
            details=details,
        )
