"""Datasets and their budgets."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, forms
from ..selectors import datasets as dataset_selectors
from ..services import datasets as dataset_services
from .base import attempt, posted, role_context, web_view


@web_view
@require_GET
def dataset_list(request):
    user = request.user
    return render(
        request,
        "federation/dataset_list.html",
        {
            **role_context(user),
            "rows": dataset_selectors.dataset_rows_for(user=user),
            "can_register": dataset_selectors.may_register(user=user),
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def dataset_create(request):
    user = request.user
    orgs, agreements = dataset_selectors.registration_scope(user=user)
    initial = {"agreement": request.GET["agreement"]} if request.GET.get("agreement") else {}
    form = forms.DatasetForm(posted(request), organisations=orgs, agreements=agreements, initial=initial)
    if request.method == "POST" and form.is_valid():
        done = attempt(
            request, dataset_services.dataset_register, form=form, guard_field="organisation", actor=user, **form.service_kwargs()
        )
        if done.ok:
            messages.success(
                request,
                _("Dataset %(slug)s registered with an epsilon budget of %(budget)s.")
                % {"slug": done.value.slug, "budget": f"{done.value.epsilon_budget:g}"},
            )
            return redirect("web:dataset_detail", slug=done.value.slug)
    terms = {a.pk: a for a in agreements}
    return render(request, "federation/dataset_form.html", {"form": form, "agreements": terms.values()})


def _dataset_page(request, dataset, *, budget_form=None, status: int = 200):
    """The dataset page, with a blank budget form for whoever may change the budget, or the
    refused one (`budget_form`) showing why."""
    page = dataset_selectors.dataset_page(user=request.user, dataset=dataset)
    may_change = page.pop("may_change_budget")
    if budget_form is None and may_change:
        budget_form = forms.RaiseBudgetForm()
    return render(
        request,
        "federation/dataset_detail.html",
        {**role_context(request.user), **page, "budget_form": budget_form},
        status=status,
    )


@web_view
@require_GET
def dataset_detail(request, slug):
    return _dataset_page(request, dataset_selectors.dataset_for(user=request.user, slug=slug))


@web_view
@require_POST
def dataset_raise_budget(request, slug):
    user = request.user
    dataset = dataset_selectors.dataset_for(user=user, slug=slug)
    form = forms.RaiseBudgetForm(request.POST)
    if not form.is_valid():
        # A figure the form refuses: whoever may not change the budget learns only that (403).
        access.require_budget_changer(user, dataset)
        return _dataset_page(request, dataset, budget_form=form, status=400)
    done = attempt(
        request,
        dataset_services.dataset_raise_budget,
        form=form,
        actor=user,
        dataset=dataset,
        epsilon_budget=form.cleaned_data["epsilon_budget"],
    )
    if not done.ok:
        return _dataset_page(request, dataset, budget_form=form, status=400)
    messages.success(
        request,
        _("Budget of %(slug)s raised to %(budget)s.") % {"slug": done.value.slug, "budget": f"{done.value.epsilon_budget:g}"},
    )
    return redirect("web:dataset_detail", slug=slug)
