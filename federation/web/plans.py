"""Training plans: defining them (propose, preview, define), their page, pausing and resuming,
and standing approvals."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, forms
from ..models import TrainingRound
from ..selectors import agreements as agreement_selectors
from ..selectors import plans as plan_selectors
from ..selectors import rounds as round_selectors
from ..services import plan_checks
from ..services import plans as plan_services
from ..services import proposals as proposal_services
from ..services import rounds as round_services
from .base import attempt, posted, role_context, safe_next, web_view


@web_view
@require_GET
def plan_list(request):
    user = request.user
    return render(request, "federation/plan_list.html", {**role_context(user), "plans": plan_selectors.plan_rows_for(user=user)})


def _define(*, actor, plan_form, action: str, state: dict):
    """The plan previewed (every definition-time check and the projection, nothing saved) or
    defined (saved). Values left empty take the planner's (`plan_fill`). `state` keeps the planner's
    explanation for the page when a check refuses."""
    data = plan_form.cleaned_data
    filled, explanation = proposal_services.plan_fill(
        agreement=data["agreement"], datasets=data["datasets"], rounds_total=data["rounds_total"],
        model_spec=plan_form.model_spec(), given=plan_form.given_planned(plan_checks.PLANNED_FIELDS), explain=bool(data.get("proposed")),
    )  # fmt: skip
    kwargs = {**plan_form.service_kwargs(plan_checks.PLANNED_FIELDS), **filled, "explanation": explanation}
    state["explanation"] = explanation
    if action == forms.PlanForm.ACTION_PREVIEW:
        return plan_checks.plan_check(actor=actor, **kwargs)
    return plan_services.plan_create(actor=actor, **kwargs)


@web_view
@require_http_methods(["GET", "POST"])
def plan_create(request):
    """Two steps on one page: "Propose" fills the planner's values from the agreement, datasets,
    rounds and model; "Preview" runs every definition-time check and shows the whole plan's
    epsilon per dataset against its remaining budget without saving; "Define" saves. Values
    left empty take the planner's (services.proposals.plan_fill, cached per inputs)."""
    user = request.user
    access.require_administrator(user, what="training plan", action="create")
    agreements = agreement_selectors.open_agreements()
    initial = {"agreement": request.GET.get("agreement")} if request.GET.get("agreement") else {}
    form = forms.PlanForm(posted(request), agreements=agreements, initial=initial)
    action = request.POST.get("action") or forms.PlanForm.ACTION_CREATE
    context = {"agreements": agreements, "explanation": "", "projection": None, "previewed": False}
    if request.method == "POST" and action == forms.PlanForm.ACTION_PROPOSE:
        if form.schedule_valid():
            done = attempt(
                request, proposal_services.plan_propose_with_projection, form=form, field_map=forms.PlanForm.ERROR_FIELDS,
                agreement=form.cleaned_data["agreement"], datasets=form.cleaned_data["datasets"],
                rounds_total=form.cleaned_data["rounds_total"], model_spec=form.model_spec(),
            )  # fmt: skip
            if done.ok:
                proposal = done.value
                filled = request.POST.copy()
                for name, value in forms.PlanForm.proposal_initial(proposal["values"]).items():
                    filled[name] = "on" if value is True else ("" if value is None else str(value))
                form = forms.PlanForm(filled, agreements=agreements)
                form.schedule_valid()  # shows the proposal; name and purpose may still be empty
                context.update(explanation=proposal["explanation"], projection=proposal["projection"])
    elif request.method == "POST" and form.is_valid():
        state = {"explanation": ""}
        done = attempt(
            request,
            _define,
            form=form,
            field_map=forms.PlanForm.ERROR_FIELDS,
            actor=user,
            plan_form=form,
            action=action,
            state=state,
        )
        if not done.ok:
            context.update(projection=(done.refusal.details or {}).get("projection") or None, explanation=state["explanation"])
        elif action == forms.PlanForm.ACTION_PREVIEW:
            checked = done.value
            context.update(
                explanation=checked.plan.explanation, projection=[p.to_dict() for p in checked.projection], previewed=True
            )
        else:
            plan = done.value
            messages.success(request, _("Plan '%(name)s' defined: %(n)s rounds.") % {"name": plan.name, "n": plan.rounds_total})
            return redirect("web:plan_detail", pk=plan.pk)
    return render(request, "federation/plan_form.html", {**context, "form": form})


@web_view
@require_GET
def plan_detail(request, pk):
    user = request.user
    plan = plan_selectors.plan_for(user=user, pk=pk)
    return render(
        request, "federation/plan_detail.html", {**role_context(user), **plan_selectors.plan_page(user=user, plan=plan)}
    )


@web_view
@require_POST
def plan_pause(request, pk):
    plan = plan_selectors.plan_for(user=request.user, pk=pk)
    back = reverse("web:plan_detail", args=[pk])
    done = attempt(
        request, plan_services.plan_pause, back=back, actor=request.user, plan=plan, reason=request.POST.get("reason", "")
    )
    if done.response:
        return done.response
    messages.success(request, _("Plan paused: no round or retry is requested until it is resumed."))
    return redirect(back)


@web_view
@require_POST
def plan_resume(request, pk):
    plan = plan_selectors.plan_for(user=request.user, pk=pk)
    back = reverse("web:plan_detail", args=[pk])
    done = attempt(request, round_services.plan_resume, back=back, actor=request.user, plan=plan)
    if done.response:
        return done.response
    _plan, nxt = done.value
    if nxt is not None and nxt.status == TrainingRound.Status.BLOCKED:
        messages.error(
            request,
            _("Plan resumed, but round %(number)s is blocked by governance: %(reason)s")
            % {"number": nxt.number, "reason": nxt.reason},
        )
    else:
        messages.success(
            request,
            _("Plan resumed; round %(number)s requested.") % {"number": nxt.number} if nxt is not None else _("Plan resumed."),
        )
    return redirect(back)


@web_view
@require_http_methods(["GET", "POST"])
def standing_approval(request, pk, org_slug):
    user = request.user
    plan, org = plan_selectors.standing_target(user=user, pk=pk, org_slug=org_slug)
    form = forms.StandingApprovalForm(posted(request))
    if request.method == "POST" and form.is_valid():
        done = attempt(
            request,
            round_services.standing_approval_give,
            form=form,
            actor=user,
            plan=plan,
            organisation=org,
            **form.cleaned_data,
        )
        if done.ok:
            messages.success(
                request, _("%(org)s gave a standing approval for '%(plan)s'.") % {"org": org.name, "plan": plan.name}
            )
            return redirect(safe_next(request, reverse("web:plan_detail", args=[pk])))
    return render(
        request,
        "federation/standing_approval.html",
        {"plan": plan, "organisation": org, "form": form, "progress": round_selectors.plan_progress(plan=plan)},
    )
