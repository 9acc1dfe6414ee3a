"""Organisations, their people and their partner agents."""

from __future__ import annotations

from django.db.models import Count, QuerySet
from django.utils.translation import gettext_noop

from fedgov.errors import NotFound, PermissionDenied

from .. import access
from ..models import Membership, Organisation
from .common import get_visible

MSG_AGENTS_FORBIDDEN = gettext_noop("Only administrators and organisations' representatives see partner agents.")


def organisation_for(*, user, slug: str) -> Organisation:
    return get_visible(access.visible_organisations(user), what="Organisation", slug=slug)


def organisations_for(*, user) -> QuerySet[Organisation]:
    """The API's organisations: `access.visible_organisations(user)`."""
    return access.visible_organisations(user)


def organisation_list_for(*, user) -> QuerySet[Organisation]:
    qs = access.visible_organisations(user)
    return qs.annotate(n_members=Count("memberships", distinct=True), n_datasets=Count("datasets", distinct=True))


def memberships_of(*, organisation) -> QuerySet[Membership]:
    return Membership.objects.filter(organisation=organisation).select_related("user").order_by("user__username", "role")


def memberships_for(*, user) -> QuerySet[Membership]:
    """The API's memberships: `access.visible_memberships(user)`, newest first."""
    return access.visible_memberships(user).select_related("user", "organisation").order_by("-created_at", "-id")


def membership_of(*, organisation, pk: int) -> Membership:
    """One membership of `organisation` (the organisation already scoped to the user), or NotFound."""
    membership = Membership.objects.filter(pk=pk, organisation=organisation).select_related("user").first()
    if membership is None:
        raise NotFound(gettext_noop("Membership not found."))
    return membership


def is_agent_user(*, user) -> bool:
    """Whether `user` is some organisation's partner agent (its tokens take agent scopes)."""
    return Membership.objects.filter(user=user, role=Membership.Role.AGENT).exists()


def agent_organisations_for(*, user) -> QuerySet[Organisation]:
    """Whose partner agents `user` sees (`access.agent_organisations`), by name."""
    return access.agent_organisations(user).order_by("name")


def agents_page_for(*, user) -> QuerySet[Organisation]:
    """The agents page's organisations; 403 for whoever sees no agent at all."""
    organisations = access.agent_organisations(user)
    if not access.is_administrator(user) and not organisations.exists():
        raise PermissionDenied(MSG_AGENTS_FORBIDDEN)
    return organisations


def agent_scope(*, user, organisation) -> QuerySet[Organisation] | None:
    """The organisation page's agent panel: `organisation` alone, as the queryset the agents'
    overview reads, or None when the user may not see its agent (`access.may_see_agent`)."""
    if not access.may_see_agent(user, organisation):
        return None
    return access.agent_organisations(user).filter(pk=organisation.pk)


def organisation_page(*, user, organisation) -> dict:
    """The organisation page: its people (for those who may see them), and the agreements and
    datasets the user sees of it."""
    from .agreements import agreements_of
    from .datasets import datasets_of

    return {
        "organisation": organisation,
        "memberships": memberships_of(organisation=organisation) if access.may_see_members(user, organisation) else [],
        "agreements": agreements_of(user=user, organisation=organisation),
        "datasets": datasets_of(user=user, organisation=organisation),
    }
