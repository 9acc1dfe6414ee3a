"""Organisations, their people and their partner agents."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, forms
from ..models import Membership
from ..selectors import organisations as organisation_selectors
from ..services import agents as agent_services
from ..services import organisations as organisation_services
from .base import attempt, posted, role_context, web_view


@web_view
@require_GET
def organisation_list(request):
    user = request.user
    return render(
        request,
        "federation/organisation_list.html",
        {**role_context(user), "organisations": organisation_selectors.organisation_list_for(user=user)},
    )


@web_view
@require_http_methods(["GET", "POST"])
def organisation_create(request):
    access.require_administrator(request.user, what="organisation", action="create")
    form = forms.OrganisationForm(posted(request))
    if request.method == "POST" and form.is_valid():
        done = attempt(request, organisation_services.organisation_create, form=form, actor=request.user, **form.cleaned_data)
        if done.ok:
            org = done.value
            messages.success(request, _("%(org)s registered. Add its representatives next.") % {"org": org.name})
            return redirect("web:organisation_detail", slug=org.slug)
    return render(request, "federation/organisation_form.html", {"form": form})


@web_view
@require_GET
def organisation_detail(request, slug):
    user = request.user
    org = organisation_selectors.organisation_for(user=user, slug=slug)
    agents = organisation_selectors.agent_scope(user=user, organisation=org)
    return render(
        request,
        "federation/organisation_detail.html",
        {
            **role_context(user),
            **organisation_selectors.organisation_page(user=user, organisation=org),
            "agents": agent_services.agents_overview(agents, refusals=None) if agents is not None else None,
        },
    )


@web_view
@require_GET
def agent_list(request):
    """The partner agents: administrators see every organisation's, a representative its own
    organisations'. Enrolment, last poll (online or not), software, terms held, refusals."""
    user = request.user
    organisations = organisation_selectors.agents_page_for(user=user)
    return render(
        request,
        "federation/agent_list.html",
        {
            **role_context(user),
            "agents": agent_services.agents_overview(organisations),
            "online_seconds": int(agent_services.online_window().total_seconds()),
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def member_create(request, slug):
    """Register a person at an organisation: a new user account and its membership (one
    transaction: a refused membership leaves no orphan account), or a role for an existing user."""
    access.require_administrator(request.user, what="membership", action="create")
    org = organisation_selectors.organisation_for(user=request.user, slug=slug)
    which = request.POST.get("which")
    new_form = forms.RepresentativeForm(request.POST if which == "new" else None, prefix="new")
    existing_form = forms.ExistingMemberForm(request.POST if which == "existing" else None, prefix="existing")
    form = new_form if which == "new" else existing_form
    if request.method == "POST" and form.is_bound and form.is_valid():
        data = form.cleaned_data
        if form is new_form:
            done = attempt(
                request,
                organisation_services.member_register,
                form=form,
                field_map={"user": "username"},
                actor=request.user,
                organisation=org,
                role=data["role"],
                username=data["username"],
                password=data["password"],
                email=data.get("email") or "",
                first_name=data.get("first_name") or "",
                last_name=data.get("last_name") or "",
            )
        else:
            done = attempt(
                request,
                organisation_services.membership_add,
                form=form,
                actor=request.user,
                user=data["user"],
                organisation=org,
                role=data["role"],
            )
        if done.ok:
            role = str(Membership.Role(form.cleaned_data["role"]).label).lower()
            messages.success(
                request,
                _("%(user)s is now %(role)s of %(org)s.") % {"user": done.value.user.username, "role": role, "org": org.name},
            )
            return redirect("web:organisation_detail", slug=org.slug)
    return render(
        request, "federation/member_form.html", {"organisation": org, "new_form": new_form, "existing_form": existing_form}
    )


@web_view
@require_POST
def member_remove(request, slug: str, pk: int):
    access.require_administrator(request.user, what="membership", action="remove")
    org = organisation_selectors.organisation_for(user=request.user, slug=slug)
    membership = organisation_selectors.membership_of(organisation=org, pk=pk)
    back = reverse("web:organisation_detail", args=[org.slug])
    done = attempt(request, organisation_services.membership_remove, back=back, actor=request.user, membership=membership)
    if done.ok:
        messages.success(
            request,
            _("%(user)s is no longer %(role)s of %(org)s.")
            % {"user": membership.user.username, "role": membership.get_role_display().lower(), "org": org.name},
        )
    return done.response or redirect(back)
