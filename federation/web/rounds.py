"""Training rounds: requesting one, the round page and its live part, and the
representatives' decisions."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import forms
from ..models import TrainingRound
from ..selectors import plans as plan_selectors
from ..selectors import rounds as round_selectors
from ..services import agents as agent_services
from ..services import rounds as round_services
from .base import attempt, role_context, web_view


@web_view
@require_POST
def round_request(request, pk):
    user = request.user
    plan = plan_selectors.plan_for(user=user, pk=pk)
    done = attempt(request, round_services.round_request, back=reverse("web:plan_detail", args=[pk]), actor=user, plan=plan)
    if done.response:
        return done.response
    round = done.value
    if round.status == TrainingRound.Status.BLOCKED:
        messages.error(
            request, _("Round %(number)s is blocked by governance: %(reason)s") % {"number": round.number, "reason": round.reason}
        )
    else:
        messages.success(
            request,
            _("Round %(number)s requested: %(status)s.") % {"number": round.number, "status": round.get_status_display().lower()},
        )
    return redirect("web:round_detail", pk=round.pk)


@web_view
@require_GET
def round_list(request):
    user = request.user
    status = request.GET.get("status") or None
    if status and status not in TrainingRound.Status.values:
        status = None
    page = Paginator(round_selectors.round_list_for(user=user, status=status), 50).get_page(request.GET.get("page"))
    return render(
        request,
        "federation/round_list.html",
        {**role_context(user), "page": page, "status": status, "statuses": TrainingRound.Status.choices},
    )


def _live(user, round) -> dict:
    """The part of the round page that changes while the round runs, and whose agents are online."""
    return {**round_selectors.round_live(user=user, round=round), "partners_online": agent_services.partners_online(round)}


@web_view
@require_GET
def round_detail(request, pk):
    user = request.user
    round = round_selectors.round_for(user=user, pk=pk)
    return render(
        request,
        "federation/round_detail.html",
        {
            **role_context(user),
            "checks": round_selectors.report_checks(round=round),
            "report": round.governance_report or {},
            **_live(user, round),
        },
    )


@web_view
@require_GET
def round_progress(request, pk):
    """The live part of the round page; htmx polls it every 2 s until the round is final
    (the final fragment carries no hx-trigger, so polling stops by itself). The decisions,
    the budget and the "your decision is needed" callout come along as out-of-band swaps,
    so no part of the page is left showing a round that has moved on."""
    round = round_selectors.round_for(user=request.user, pk=pk)
    return render(
        request, "federation/_round_live.html", {**round_selectors.round_live(user=request.user, round=round), "oob": True}
    )


def _approval_page(request, round, org, *, reject_form=None, status: int = 200):
    context = {
        **round_selectors.approval_page(round=round, organisation=org),
        "partners_online": agent_services.partners_online(round),
        "reject_form": reject_form or forms.RejectForm(),
        "standing_form": forms.StandingApprovalForm(),
    }
    return render(request, "federation/round_approval.html", context, status=status)


@web_view
@require_GET
def round_approval_pick(request, pk):
    """/rounds/<pk>/approval/: the approval page of the one organisation the user decides for."""
    user = request.user
    round = round_selectors.round_for(user=user, pk=pk)
    orgs = round_selectors.deciders_for(user=user, round=round)
    if len(orgs) == 1:
        return redirect("web:round_approval", pk=pk, org_slug=orgs[0].slug)
    return render(request, "federation/round_approval_pick.html", {"round": round, "orgs": orgs})


@web_view
@require_http_methods(["GET", "POST"])
def round_approval(request, pk, org_slug):
    """The representative's decision page: governance report, the epsilon this round costs
    each dataset against what was spent and what remains, the plan's remaining rounds.
    POST approves."""
    user = request.user
    round, org = round_selectors.approval_target(user=user, pk=pk, org_slug=org_slug)
    if request.method == "POST":
        back = reverse("web:round_approval", args=[pk, org_slug])
        done = attempt(request, round_services.round_approve, back=back, actor=user, round=round, organisation=org)
        if done.ok:
            round.refresh_from_db()
            messages.success(
                request,
                _("%(org)s approved round %(number)s. The round is %(status)s.")
                % {"org": org.name, "number": round.number, "status": round.get_status_display().lower()},
            )
        return redirect(back)
    return _approval_page(request, round, org)


@web_view
@require_POST
def round_reject(request, pk, org_slug):
    user = request.user
    round, org = round_selectors.approval_target(user=user, pk=pk, org_slug=org_slug)
    form = forms.RejectForm(request.POST)
    if form.is_valid():
        back = reverse("web:round_approval", args=[pk, org_slug])
        done = attempt(
            request, round_services.round_reject, form=form, back=back, actor=user, round=round, organisation=org,
            reason=form.cleaned_data["reason"],
        )  # fmt: skip
        if done.response:
            return done.response
        if done.ok:
            messages.success(request, _("%(org)s rejected round %(number)s.") % {"org": org.name, "number": round.number})
            return redirect(back)
    return _approval_page(request, round, org, reject_form=form, status=400)
