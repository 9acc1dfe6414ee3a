"""The dashboard, the inbox and the governance history."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from .. import forms
from ..selectors import agreements as agreement_selectors
from ..selectors import dashboard as dashboard_selectors
from ..selectors import events as event_selectors
from .base import role_context, web_view


@web_view
@require_GET
def dashboard(request):
    return render(request, "federation/dashboard.html", dashboard_selectors.dashboard_for(user=request.user))


@web_view
@require_GET
def inbox(request):
    user = request.user
    return render(request, "federation/inbox.html", {**role_context(user), **dashboard_selectors.inbox_for(user=user)})


@web_view
@require_GET
def event_list(request):
    user = request.user
    agreements = event_selectors.history_agreements(user=user)
    form = forms.EventFilterForm(request.GET or None, agreements=agreements)
    agreement = kind = None
    if form.is_bound and form.is_valid():
        agreement = form.cleaned_data.get("agreement")
        kind = form.cleaned_data.get("kind") or None
    elif request.GET.get("agreement"):
        # An agreement the user cannot read the history of: 404 if invisible, 403 if visible.
        agreement_selectors.require_history_of(user=user, pk=agreement_pk(request.GET["agreement"]))
    events = event_selectors.events_for(user=user, agreement=agreement, kind=kind)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "federation/event_list.html",
        {**role_context(user), "form": form, "page": page, "query": query.urlencode(), "no_access": not agreements.exists()},
    )


def agreement_pk(text: str) -> int:
    """An agreement id from a query string; 404 when it is not a number."""
    try:
        return int(text)
    except ValueError:
        raise Http404(_("Agreement not found.")) from None
