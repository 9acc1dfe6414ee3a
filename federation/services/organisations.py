"""Writes for organisations and memberships (administrator only)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from fedgov.errors import ValidationFailed

from ..access import require_administrator
from ..models import Membership, Organisation
from .common import validated

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
def membership_remove(*, actor, membership: Membership) -> None:
    require_administrator(actor, what="membership", action="remove")
    membership.delete()
