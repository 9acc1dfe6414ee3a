"""Agreements: drafting, amending, signing, status changes and exit notice."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, forms
from ..models import Agreement
from ..selectors import agreements as agreement_selectors
from ..services import agreements as agreement_services
from .base import attempt, posted, role_context, web_view


@web_view
@require_GET
def agreement_list(request):
    user = request.user
    status = request.GET.get("status") or None
    if status and status not in Agreement.Status.values:
        status = None
    return render(
        request,
        "federation/agreement_list.html",
        {
            **role_context(user),
            "agreements": agreement_selectors.agreement_list_for(user=user, status=status),
            "status": status,
            "statuses": Agreement.Status.choices,
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def agreement_create(request):
    access.require_administrator(request.user, what="agreement", action="create")
    form = forms.AgreementForm(posted(request))
    if request.method == "POST" and form.is_valid():
        done = attempt(
            request,
            agreement_services.agreement_create,
            form=form,
            actor=request.user,
            parties=list(form.cleaned_data["parties"]),
            auditors=list(form.cleaned_data["auditors"]),
            **form.terms(),
        )
        if done.ok:
            messages.success(
                request, _("Draft '%(title)s' saved. Review it, then send it for signature.") % {"title": done.value.title}
            )
            return redirect("web:agreement_detail", pk=done.value.pk)
    return render(request, "federation/agreement_form.html", {"form": form, "mode": "create"})


@web_view
@require_GET
def agreement_detail(request, pk):
    user = request.user
    agreement = agreement_selectors.agreement_for(user=user, pk=pk)
    return render(
        request,
        "federation/agreement_detail.html",
        {**role_context(user), **agreement_selectors.agreement_overview(user=user, agreement=agreement)},
    )


@web_view
@require_http_methods(["GET", "POST"])
def agreement_edit(request, pk):
    """Edit a draft's terms, or amend an agreement whose signing has started (a new version
    that every party signs again)."""
    user = request.user
    agreement = agreement_selectors.agreement_for(user=user, pk=pk)
    amending = agreement.terms_frozen
    access.require_administrator(user, what="agreement", action="amend" if amending else "edit")
    if agreement.status in agreement_selectors.CLOSED:
        messages.error(
            request,
            _("'%(title)s' is %(status)s and cannot change any more.")
            % {"title": agreement.title, "status": agreement.get_status_display().lower()},
        )
        return redirect("web:agreement_detail", pk=agreement.pk)
    form = forms.AgreementForm(posted(request), initial=forms.AgreementForm.initial_from(agreement))
    if request.method == "POST" and form.is_valid():
        service = agreement_services.agreement_amend if amending else agreement_services.agreement_update_terms
        done = attempt(
            request,
            service,
            form=form,
            actor=user,
            agreement=agreement,
            parties=list(form.cleaned_data["parties"]),
            auditors=list(form.cleaned_data["auditors"]),
            **form.terms(),
        )
        if done.ok:
            agreement = done.value
            if amending:
                messages.success(
                    request,
                    _("'%(title)s' amended to version %(version)s; every party signs again.")
                    % {"title": agreement.title, "version": agreement.version},
                )
            else:
                messages.success(request, _("Draft '%(title)s' updated.") % {"title": agreement.title})
            return redirect("web:agreement_detail", pk=agreement.pk)
    return render(
        request, "federation/agreement_form.html", {"form": form, "mode": "amend" if amending else "edit", "agreement": agreement}
    )


@web_view
@require_POST
def agreement_submit(request, pk):
    agreement = agreement_selectors.agreement_for(user=request.user, pk=pk)
    back = reverse("web:agreement_detail", args=[pk])
    done = attempt(request, agreement_services.agreement_submit, back=back, actor=request.user, agreement=agreement)
    if done.response:
        return done.response
    messages.success(
        request,
        _("'%(title)s' sent for signature. Terms hash %(hash)s.") % {"title": done.value.title, "hash": done.value.terms_hash},
    )
    return redirect(back)


STATUS_ACTIONS = {
    "suspend": (
        agreement_services.agreement_suspend,
        gettext_lazy("Suspend"),
        gettext_lazy("suspended: no round starts until it is resumed"),
    ),
    "resume": (agreement_services.agreement_resume, gettext_lazy("Resume"), gettext_lazy("active again")),
    "terminate": (agreement_services.agreement_terminate, gettext_lazy("Terminate"), gettext_lazy("terminated, for good")),
}


@web_view
@require_http_methods(["GET", "POST"])
def agreement_status(request, pk, action):
    if action not in STATUS_ACTIONS:
        raise Http404(_("No such action."))
    service, verb, outcome = STATUS_ACTIONS[action]
    agreement = agreement_selectors.agreement_for(user=request.user, pk=pk)
    access.require_administrator(request.user, what="agreement", action="change the status of")
    form = forms.ReasonForm(posted(request))
    if request.method == "POST" and form.is_valid():
        back = reverse("web:agreement_detail", args=[pk])
        done = attempt(
            request, service, form=form, back=back, actor=request.user, agreement=agreement, reason=form.cleaned_data["reason"]
        )
        if done.response:
            return done.response
        if done.ok:
            messages.success(request, _("'%(title)s' is %(outcome)s.") % {"title": agreement.title, "outcome": outcome})
            return redirect(back)
    return render(
        request,
        "federation/agreement_status.html",
        {"agreement": agreement, "form": form, "action": action, "verb": verb, "outcome": outcome},
    )


def _party_target(user, pk, org_slug, *, action: str):
    """The agreement and the party organisation a representative acts for: 404 for an
    agreement the user cannot see or an organisation that is no party, 403 for whoever does not
    represent it."""
    agreement = agreement_selectors.agreement_for(user=user, pk=pk)
    org = agreement_selectors.party_of(agreement=agreement, slug=org_slug)
    access.require_representative(user, organisation=org, agreement=agreement, action=action)
    return agreement, org


@web_view
@require_http_methods(["GET", "POST"])
def agreement_sign(request, pk, org_slug):
    """Show the terms and their SHA-256; the form posts back the hash shown, and the service
    refuses to sign any hash other than the current one (terms changed under the reader)."""
    user = request.user
    agreement, org = _party_target(user, pk, org_slug, action="sign this agreement")
    form = forms.SignForm(posted(request), initial={"terms_hash": agreement.terms_hash})
    if request.method == "POST" and form.is_valid():
        done = attempt(
            request,
            agreement_services.agreement_sign,
            form=form,
            actor=user,
            agreement=agreement,
            organisation=org,
            terms_hash=form.cleaned_data["terms_hash"],
        )
        if done.ok:
            agreement.refresh_from_db()
            if agreement.status == Agreement.Status.ACTIVE:
                messages.success(
                    request,
                    _("%(org)s signed. Every party has signed: '%(title)s' is active.")
                    % {"org": org.name, "title": agreement.title},
                )
            else:
                messages.success(
                    request,
                    _("%(org)s signed '%(title)s' v%(version)s.")
                    % {"org": org.name, "title": agreement.title, "version": agreement.version},
                )
            return redirect("web:agreement_detail", pk=pk)
    already = agreement_selectors.signature_of(agreement=agreement, organisation=org)
    return render(
        request,
        "federation/agreement_sign.html",
        {
            "agreement": agreement,
            "organisation": org,
            "form": form,
            "terms": agreement.terms(),
            "canonical": agreement.canonical_terms().decode(),
            "signable": agreement.status == Agreement.Status.AWAITING_SIGNATURES and already is None,
            "already": already,
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def agreement_exit(request, pk, org_slug):
    user = request.user
    agreement, org = _party_target(user, pk, org_slug, action="give exit notice")
    party = agreement_selectors.party_link(agreement=agreement, organisation=org)
    form = forms.ExitNoticeForm(posted(request))
    if request.method == "POST" and form.is_valid():
        done = attempt(
            request, agreement_services.party_give_exit_notice, form=form, actor=user, agreement=agreement, organisation=org
        )
        if done.ok:
            messages.success(
                request,
                _("%(org)s gave exit notice; the exit takes effect on %(when)s UTC.")
                % {"org": org.name, "when": f"{done.value.exit_effective_at:%Y-%m-%d %H:%M}"},
            )
            return redirect("web:agreement_detail", pk=pk)
    return render(
        request,
        "federation/agreement_exit.html",
        {
            "agreement": agreement,
            "organisation": org,
            "party": party,
            "form": form,
            "effective": timezone.now() + timedelta(days=agreement.exit_notice_days),
            "org_datasets": agreement_selectors.party_datasets(agreement=agreement, organisation=org),
        },
    )
