"""The web UI: server-rendered pages that call the same services as the API.

Views hold no domain logic (ARCHITECTURE.md, Conventions 1): reads come from `selectors`, writes go through
`services`, and who may see or do what is `access`'s rule (the services check it again). A view only
translates: `NotFound` becomes a 404 page, `PermissionDenied` a 403 page, and
`ValidationFailed` the form's errors next to its fields. Every change is a POST; pages that
only read (an auditor's view of everything) render no change form at all.
"""

from __future__ import annotations

import functools
import io
from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from fedgov.errors import ApplicationError, NotFound, PermissionDenied, ValidationFailed

from . import access, forms, selectors
from .access import (
    audits,
    is_administrator,
    is_auditor,
    represented_organisations,
    require_administrator,
    require_representative,
    visible_agreements,
    visible_datasets,
)
from .i18n import verification_line
from .models import Agreement, AgreementParty, Membership, Organisation, RoundApproval, TrainingPlan, TrainingRound
from .services import agents as agent_services
from .services import agreements as agreement_services
from .services import datasets as dataset_services
from .services import organisations as organisation_services
from .services import plans as plan_services
from .services import proposals as proposal_services
from .services import rounds as round_services

User = get_user_model()


def web_view(view):
    """Login required; domain NotFound/PermissionDenied become the 404/403 pages."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(exc.message) from exc
        except PermissionDenied as exc:
            raise DjangoPermissionDenied(exc.message) from exc

    return login_required(wrapper)


def _role_context(user) -> dict:
    return {"is_admin": is_administrator(user), "is_auditor": is_auditor(user)}


def _posted(request):
    """The POST data for a bound form, even when empty (an unticked checkbox sends nothing,
    and an empty QueryDict is falsy: `request.POST or None` would skip validation)."""
    return request.POST if request.method == "POST" else None


def _safe_next(request, default: str) -> str:
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def _refused(request, exc: ApplicationError, to: str):
    """A POST-only action the service refused (wrong state, say): say why, go back."""
    messages.error(request, exc.message)
    return redirect(to)


class SignOutView(auth_views.LogoutView):
    """Log out and say so on the login page (issue 17: a silent logout leaves people unsure)."""

    def post(self, request, *args, **kwargs):
        was_signed_in = request.user.is_authenticated
        response = super().post(request, *args, **kwargs)
        if was_signed_in:
            # The session is flushed by now; the message storage falls back to its cookie.
            messages.info(request, MSG_SIGNED_OUT)
        return response


MSG_SIGNED_OUT = "You have signed out."


# --- Dashboard and inbox ----------------------------------------------------------------------


@web_view
@require_GET
def dashboard(request):
    user = request.user
    context = selectors.dashboard_for(user)
    context["to_decide"] = selectors.approval_items(user)
    if context["is_admin"]:
        context["admin"] = selectors.admin_attention()
    if context["is_auditor"]:
        context["audited_datasets"] = list(selectors.audited_datasets(user))
    return render(request, "federation/dashboard.html", context)


@web_view
@require_GET
def inbox(request):
    user = request.user
    return render(
        request,
        "federation/inbox.html",
        {
            **_role_context(user),
            "to_sign": selectors.agreements_to_sign(user),
            "to_approve": selectors.approval_items(user),
            "representative": represented_organisations(user).exists(),
        },
    )


# --- Organisations and people -----------------------------------------------------------------


@web_view
@require_GET
def organisation_list(request):
    user = request.user
    return render(
        request,
        "federation/organisation_list.html",
        {**_role_context(user), "organisations": selectors.organisation_list_for(user)},
    )


@web_view
@require_http_methods(["GET", "POST"])
def organisation_create(request):
    require_administrator(request.user, what="organisation", action="create")
    form = forms.OrganisationForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            org = organisation_services.organisation_create(actor=request.user, **form.cleaned_data)
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc)
        else:
            messages.success(request, _("%(org)s registered. Add its representatives next.") % {"org": org.name})
            return redirect("web:organisation_detail", slug=org.slug)
    return render(request, "federation/organisation_form.html", {"form": form})


@web_view
@require_GET
def organisation_detail(request, slug):
    user = request.user
    org = selectors.organisation_for(user, slug)
    return render(
        request,
        "federation/organisation_detail.html",
        {
            **_role_context(user),
            "organisation": org,
            "memberships": selectors.memberships_of(org) if access.may_see_members(user, org) else [],
            "agreements": visible_agreements(user).filter(parties=org),
            "datasets": visible_datasets(user).filter(organisation=org),
            "agents": agent_services.agents_overview(access.agent_organisations(user).filter(pk=org.pk), refusals=None)
            if access.may_see_agent(user, org)
            else None,
        },
    )


@web_view
@require_GET
def agent_list(request):
    """The partner agents: administrators see every organisation's, a representative its own
    organisations'. Enrolment, last poll (online or not), software, terms held, refusals."""
    user = request.user
    organisations = access.agent_organisations(user)
    if not is_administrator(user) and not organisations.exists():
        raise DjangoPermissionDenied(_("Only administrators and organisations' representatives see partner agents."))
    return render(
        request,
        "federation/agent_list.html",
        {
            **_role_context(user),
            "agents": agent_services.agents_overview(organisations),
            "online_seconds": int(agent_services.online_window().total_seconds()),
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def member_create(request, slug):
    """Register a person at an organisation: a new user account and its membership, or a
    role for an existing user. Both in one transaction, so a refused membership leaves no
    orphan account behind."""
    require_administrator(request.user, what="membership", action="create")
    org = selectors.organisation_for(request.user, slug)
    new_form = forms.RepresentativeForm(request.POST if request.POST.get("which") == "new" else None, prefix="new")
    existing_form = forms.ExistingMemberForm(request.POST if request.POST.get("which") == "existing" else None, prefix="existing")
    form = new_form if request.POST.get("which") == "new" else existing_form
    if request.method == "POST" and form.is_bound and form.is_valid():
        data = form.cleaned_data
        try:
            with transaction.atomic():
                if form is new_form:
                    person = User.objects.create_user(
                        username=data["username"],
                        password=data["password"],
                        email=data.get("email") or "",
                        first_name=data.get("first_name") or "",
                        last_name=data.get("last_name") or "",
                    )
                else:
                    person = data["user"]
                organisation_services.membership_add(actor=request.user, user=person, organisation=org, role=data["role"])
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc, {"user": "username" if form is new_form else "user"})
        else:
            messages.success(
                request,
                _("%(user)s is now %(role)s of %(org)s.")
                % {"user": person.username, "role": str(Membership.Role(data["role"]).label).lower(), "org": org.name},
            )
            return redirect("web:organisation_detail", slug=org.slug)
    return render(
        request, "federation/member_form.html", {"organisation": org, "new_form": new_form, "existing_form": existing_form}
    )


# --- Agreements -------------------------------------------------------------------------------


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
            **_role_context(user),
            "agreements": selectors.agreement_list_for(user, status),
            "status": status,
            "statuses": Agreement.Status.choices,
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def agreement_create(request):
    require_administrator(request.user, what="agreement", action="create")
    form = forms.AgreementForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            agreement = agreement_services.agreement_create(
                actor=request.user,
                parties=list(form.cleaned_data["parties"]),
                auditors=list(form.cleaned_data["auditors"]),
                **form.terms(),
            )
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc)
        else:
            messages.success(request, _("Draft '%(title)s' saved. Review it, then send it for signature.") % {"title": agreement.title})
            return redirect("web:agreement_detail", pk=agreement.pk)
    return render(request, "federation/agreement_form.html", {"form": form, "mode": "create"})


@web_view
@require_GET
def agreement_detail(request, pk):
    user = request.user
    agreement = selectors.agreement_for(user, pk)
    my_orgs = list(access.representative_parties(user, agreement))
    parties = selectors.agreement_parties(agreement)
    can_sign = []
    can_exit = []
    if agreement.status == Agreement.Status.AWAITING_SIGNATURES:
        signed = {row["organisation"].pk for row in parties if row["signature"]}
        can_sign = [o for o in my_orgs if o.pk not in signed]
    if agreement.status not in (Agreement.Status.TERMINATED, Agreement.Status.EXPIRED):
        active = {row["organisation"].pk for row in parties if row["status"] == AgreementParty.Status.ACTIVE}
        can_exit = [o for o in my_orgs if o.pk in active]
    can_see_history = access.may_read_history(user, agreement)
    return render(
        request,
        "federation/agreement_detail.html",
        {
            **_role_context(user),
            "agreement": agreement,
            "parties": parties,
            "auditors": agreement.auditors.order_by("username"),
            "datasets": agreement.datasets.select_related("organisation"),
            "plans": agreement.plans.all(),
            "can_sign": can_sign,
            "can_exit": can_exit,
            "can_see_history": can_see_history,
            "events": selectors.events_for(user, agreement=agreement)[:10] if can_see_history else [],
        },
    )


@web_view
@require_http_methods(["GET", "POST"])
def agreement_edit(request, pk):
    """Edit a draft's terms, or amend an agreement whose signing has started (a new version
    that every party signs again)."""
    user = request.user
    agreement = selectors.agreement_for(user, pk)
    amending = agreement.terms_frozen
    require_administrator(user, what="agreement", action="amend" if amending else "edit")
    if agreement.status in (Agreement.Status.TERMINATED, Agreement.Status.EXPIRED):
        messages.error(
            request,
            _("'%(title)s' is %(status)s and cannot change any more.")
            % {"title": agreement.title, "status": agreement.get_status_display().lower()},
        )
        return redirect("web:agreement_detail", pk=agreement.pk)
    form = forms.AgreementForm(_posted(request), initial=forms.AgreementForm.initial_from(agreement))
    if request.method == "POST" and form.is_valid():
        service = agreement_services.agreement_amend if amending else agreement_services.agreement_update_terms
        try:
            agreement = service(
                actor=user,
                agreement=agreement,
                parties=list(form.cleaned_data["parties"]),
                auditors=list(form.cleaned_data["auditors"]),
                **form.terms(),
            )
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc)
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
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
    agreement = selectors.agreement_for(request.user, pk)
    try:
        agreement = agreement_services.agreement_submit(actor=request.user, agreement=agreement)
    except (NotFound, PermissionDenied):
        raise
    except ApplicationError as exc:
        return _refused(request, exc, reverse("web:agreement_detail", args=[pk]))
    messages.success(
        request,
        _("'%(title)s' sent for signature. Terms hash %(hash)s.") % {"title": agreement.title, "hash": agreement.terms_hash},
    )
    return redirect("web:agreement_detail", pk=pk)


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
    agreement = selectors.agreement_for(request.user, pk)
    require_administrator(request.user, what="agreement", action="change the status of")
    form = forms.ReasonForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            service(actor=request.user, agreement=agreement, reason=form.cleaned_data["reason"])
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc)
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            return _refused(request, exc, reverse("web:agreement_detail", args=[pk]))
        else:
            messages.success(request, _("'%(title)s' is %(outcome)s.") % {"title": agreement.title, "outcome": outcome})
            return redirect("web:agreement_detail", pk=pk)
    return render(
        request,
        "federation/agreement_status.html",
        {"agreement": agreement, "form": form, "action": action, "verb": verb, "outcome": outcome},
    )


def _party_org(agreement: Agreement, org_slug: str) -> Organisation:
    org = agreement.parties.filter(slug=org_slug).first()
    if org is None:
        raise NotFound("Organisation not found among this agreement's parties.")
    return org


@web_view
@require_http_methods(["GET", "POST"])
def agreement_sign(request, pk, org_slug):
    """Show the terms and their SHA-256; the form posts back the hash shown, and the service
    refuses to sign any hash other than the current one (terms changed under the reader)."""
    user = request.user
    agreement = selectors.agreement_for(user, pk)
    org = _party_org(agreement, org_slug)
    require_representative(user, organisation=org, agreement=agreement, action="sign this agreement")
    form = forms.SignForm(_posted(request), initial={"terms_hash": agreement.terms_hash})
    if request.method == "POST" and form.is_valid():
        try:
            agreement_services.agreement_sign(
                actor=user, agreement=agreement, organisation=org, terms_hash=form.cleaned_data["terms_hash"]
            )
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            forms.apply_service_errors(form, exc)
        else:
            agreement.refresh_from_db()
            if agreement.status == Agreement.Status.ACTIVE:
                messages.success(
                    request,
                    _("%(org)s signed. Every party has signed: '%(title)s' is active.") % {"org": org.name, "title": agreement.title},
                )
            else:
                messages.success(
                    request,
                    _("%(org)s signed '%(title)s' v%(version)s.")
                    % {"org": org.name, "title": agreement.title, "version": agreement.version},
                )
            return redirect("web:agreement_detail", pk=pk)
    already = agreement.signatures.filter(organisation=org, version=agreement.version).first()
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
    agreement = selectors.agreement_for(user, pk)
    org = _party_org(agreement, org_slug)
    require_representative(user, organisation=org, agreement=agreement, action="give exit notice")
    party = AgreementParty.objects.get(agreement=agreement, organisation=org)
    form = forms.ExitNoticeForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            party = agreement_services.party_give_exit_notice(actor=user, agreement=agreement, organisation=org)
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            forms.apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                _("%(org)s gave exit notice; the exit takes effect on %(when)s UTC.")
                % {"org": org.name, "when": f"{party.exit_effective_at:%Y-%m-%d %H:%M}"},
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
            "org_datasets": agreement.datasets.filter(organisation=org),
        },
    )


# --- Governance history -----------------------------------------------------------------------


@web_view
@require_GET
def event_list(request):
    user = request.user
    agreements = access.history_agreements(user)
    form = forms.EventFilterForm(request.GET or None, agreements=agreements)
    agreement = kind = None
    if form.is_bound and form.is_valid():
        agreement = form.cleaned_data.get("agreement")
        kind = form.cleaned_data.get("kind") or None
    elif request.GET.get("agreement"):
        # An agreement the user cannot read the history of: 404 if invisible, 403 if visible.
        try:
            visible = selectors.agreement_for(user, int(request.GET["agreement"]))
        except ValueError:
            raise Http404(_("Agreement not found.")) from None
        access.require_history_reader(user, visible)
    events = selectors.events_for(user, agreement=agreement, kind=kind)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "federation/event_list.html",
        {**_role_context(user), "form": form, "page": page, "query": query.urlencode(), "no_access": not agreements.exists()},
    )


# --- Datasets, budgets, ledgers ---------------------------------------------------------------


@web_view
@require_GET
def dataset_list(request):
    user = request.user
    rows = []
    for dataset in selectors.dataset_list_for(user):
        rows.append({"dataset": dataset, **selectors.budget_of(dataset)})
    can_register = is_administrator(user) or represented_organisations(user).exists()
    return render(request, "federation/dataset_list.html", {**_role_context(user), "rows": rows, "can_register": can_register})


def _dataset_form_scope(user):
    """Organisations and agreements the user may register datasets for."""
    if is_administrator(user):
        return Organisation.objects.all(), Agreement.objects.exclude(
            status__in=[Agreement.Status.TERMINATED, Agreement.Status.EXPIRED]
        )
    orgs = represented_organisations(user)
    if not orgs.exists():
        require_administrator(user, what="dataset", action="register")  # 403 for read-only roles, 404 for strangers
    agreements = (
        Agreement.objects.filter(parties__in=orgs)
        .exclude(status__in=[Agreement.Status.TERMINATED, Agreement.Status.EXPIRED])
        .distinct()
    )
    return orgs, agreements


@web_view
@require_http_methods(["GET", "POST"])
def dataset_create(request):
    user = request.user
    orgs, agreements = _dataset_form_scope(user)
    initial = {}
    if request.GET.get("agreement"):
        initial["agreement"] = request.GET["agreement"]
    form = forms.DatasetForm(_posted(request), organisations=orgs, agreements=agreements, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            dataset = dataset_services.dataset_register(actor=user, **form.service_kwargs())
        except (NotFound, PermissionDenied) as exc:
            form.add_error("organisation", exc.message)
        except ApplicationError as exc:
            forms.apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                _("Dataset %(slug)s registered with an epsilon budget of %(budget)s.")
                % {"slug": dataset.slug, "budget": f"{dataset.epsilon_budget:g}"},
            )
            return redirect("web:dataset_detail", slug=dataset.slug)
    terms = {a.pk: a for a in agreements}
    return render(request, "federation/dataset_form.html", {"form": form, "agreements": terms.values()})


@web_view
@require_GET
def dataset_detail(request, slug):
    user = request.user
    dataset = selectors.dataset_for(user, slug)
    return render(
        request,
        "federation/dataset_detail.html",
        {
            **_role_context(user),
            "dataset": dataset,
            "figures": selectors.budget_of(dataset),
            "plans": dataset.plans.all(),
            "budget_form": forms.RaiseBudgetForm() if access.may_change_budget(user, dataset) else None,
            "can_read_ledger": access.may_read_ledger(user, dataset),
            "max_budget": dataset.agreement.max_epsilon_budget,
        },
    )


@web_view
@require_POST
def dataset_raise_budget(request, slug):
    user = request.user
    dataset = selectors.dataset_for(user, slug)
    form = forms.RaiseBudgetForm(request.POST)
    if form.is_valid():
        try:
            dataset = dataset_services.dataset_raise_budget(
                actor=user, dataset=dataset, epsilon_budget=form.cleaned_data["epsilon_budget"]
            )
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            forms.apply_service_errors(form, exc)
        else:
            messages.success(
                request,
                _("Budget of %(slug)s raised to %(budget)s.") % {"slug": dataset.slug, "budget": f"{dataset.epsilon_budget:g}"},
            )
            return redirect("web:dataset_detail", slug=slug)
    else:
        access.require_budget_changer(user, dataset)
    return render(
        request,
        "federation/dataset_detail.html",
        {
            **_role_context(user),
            "dataset": dataset,
            "figures": selectors.budget_of(dataset),
            "plans": dataset.plans.all(),
            "budget_form": form,
            "can_read_ledger": access.may_read_ledger(user, dataset),
            "max_budget": dataset.agreement.max_epsilon_budget,
        },
        status=400,
    )


VERIFY_SESSION_KEY = "fedgov.ledger_verifications"
LEDGER_PAGE_SIZE = 25


@web_view
@require_GET
def ledger(request, slug):
    """A dataset's budget ledger: entries (filterable, paginated), the epsilon plot, the
    verification status and the audit bundle download."""
    user = request.user
    dataset = selectors.ledger_dataset_for(user, slug)
    form = forms.LedgerFilterForm(request.GET or None)
    kind = round_number = None
    if form.is_bound and form.is_valid():
        kind = form.cleaned_data.get("kind") or None
        round_number = form.cleaned_data.get("round")
    entries = selectors.ledger_entries(dataset, kind=kind)
    if round_number:
        # The number the page shows (#1 of its plan), not the internal id (issue 17).
        entries = entries.filter(round__number=round_number)
    page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    series = selectors.ledger_series(dataset)
    verification = request.session.get(VERIFY_SESSION_KEY, {}).get(dataset.slug)
    if verification:
        bad_seq = verification.get("bad_seq")
        verification = dict(
            verification,
            grown=len(series) - verification["entries_now"],
            bad_page=(bad_seq - 1) // LEDGER_PAGE_SIZE + 1 if bad_seq else None,
        )
    return render(
        request,
        "federation/ledger.html",
        {
            **_role_context(user),
            "dataset": dataset,
            "figures": selectors.budget_of(dataset),
            "form": form,
            "page": page,
            "query": query.urlencode(),
            "series": series,
            "verification": verification,
            "audits": audits(user, dataset.agreement),
        },
    )


@web_view
@require_POST
def ledger_verify(request, slug):
    """Replay the chain now. Verification only reads, so every role that may see the ledger
    (read-only auditors too) may run it; the result is kept in the session and shown."""
    from accounting.ledger import verify_dataset
    from accounting.models import LedgerEntry

    dataset = selectors.ledger_dataset_for(request.user, slug)
    result = verify_dataset(dataset)
    stored = {
        "ok": result.ok,
        "line": verification_line(result),
        "entries": result.entries,
        "signed_heads": result.signed_heads,
        "bad_seq": result.bad_seq,
        "reason": result.error.reason if result.error else "",
        "at": timezone.now().isoformat(),
        "entries_now": LedgerEntry.objects.filter(dataset=dataset).count(),
    }
    verifications = dict(request.session.get(VERIFY_SESSION_KEY, {}))
    verifications[dataset.slug] = stored
    request.session[VERIFY_SESSION_KEY] = verifications
    if result.ok:
        messages.success(request, _("Ledger of %(slug)s verified: %(line)s") % {"slug": dataset.slug, "line": verification_line(result)})
    else:
        messages.error(request, _("Ledger of %(slug)s does NOT verify: %(line)s") % {"slug": dataset.slug, "line": verification_line(result)})
    return redirect(reverse("web:ledger", args=[slug]) + "#verification")


@web_view
@require_GET
def ledger_bundle(request, slug):
    """The signed audit bundle of this dataset's chain, to verify offline with
    `manage.py verify_ledger --bundle FILE`."""
    from accounting.ledger import export_bundle

    dataset = selectors.ledger_dataset_for(request.user, slug)
    out = io.StringIO()
    export_bundle(out, datasets=[dataset])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = HttpResponse(out.getvalue(), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="fedgov-audit-{dataset.slug}-{stamp}.json"'
    return response


# --- Plans ------------------------------------------------------------------------------------


@web_view
@require_GET
def plan_list(request):
    user = request.user
    plans = [{"plan": p, **selectors.plan_progress(p)} for p in selectors.plan_list_for(user)]
    return render(request, "federation/plan_list.html", {**_role_context(user), "plans": plans})


@web_view
@require_http_methods(["GET", "POST"])
def plan_create(request):
    """Two steps on one page: "Propose" fills the planner's values from the agreement, datasets,
    rounds and model; "Preview" runs every definition-time check and shows the whole plan's
    epsilon per dataset against its remaining budget without saving; "Define" saves. Values
    left empty take the planner's (services.proposals.plan_fill, cached per inputs)."""
    user = request.user
    require_administrator(user, what="training plan", action="create")
    agreements = Agreement.objects.exclude(status__in=[Agreement.Status.TERMINATED, Agreement.Status.EXPIRED])
    initial = {"agreement": request.GET.get("agreement")} if request.GET.get("agreement") else {}
    form = forms.PlanForm(_posted(request), agreements=agreements, initial=initial)
    action = request.POST.get("action") or forms.PlanForm.ACTION_CREATE
    context = {"agreements": agreements, "explanation": "", "projection": None, "previewed": False}
    if request.method == "POST" and action == forms.PlanForm.ACTION_PROPOSE:
        if form.schedule_valid():
            data = form.cleaned_data
            try:
                proposal = proposal_services.plan_propose_with_projection(
                    agreement=data["agreement"], datasets=data["datasets"], rounds_total=data["rounds_total"], model_spec=form.model_spec()
                )
            except ValidationFailed as exc:
                forms.apply_service_errors(form, exc, forms.PlanForm.ERROR_FIELDS)
            else:
                posted = request.POST.copy()
                for name, value in forms.PlanForm.proposal_initial(proposal["values"]).items():
                    posted[name] = "on" if value is True else ("" if value is None else str(value))
                form = forms.PlanForm(posted, agreements=agreements)
                form.schedule_valid()  # shows the proposal; name and purpose may still be empty
                context.update(explanation=proposal["explanation"], projection=proposal["projection"])
    elif request.method == "POST" and form.is_valid():
        data, kwargs = form.cleaned_data, {}
        try:
            filled, explanation = proposal_services.plan_fill(
                agreement=data["agreement"], datasets=data["datasets"], rounds_total=data["rounds_total"],
                model_spec=form.model_spec(), given=form.given_planned(plan_services.PLANNED_FIELDS), explain=bool(data.get("proposed")),
            )
            kwargs = {**form.service_kwargs(plan_services.PLANNED_FIELDS), **filled, "explanation": explanation}
            if action == forms.PlanForm.ACTION_PREVIEW:
                checked = plan_services.plan_check(actor=user, **kwargs)
                context.update(
                    explanation=checked.plan.explanation, projection=[p.to_dict() for p in checked.projection], previewed=True
                )
            else:
                plan = plan_services.plan_create(actor=user, **kwargs)
                messages.success(request, _("Plan '%(name)s' defined: %(n)s rounds.") % {"name": plan.name, "n": plan.rounds_total})
                return redirect("web:plan_detail", pk=plan.pk)
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc, forms.PlanForm.ERROR_FIELDS)
            context.update(projection=(exc.details or {}).get("projection") or None, explanation=kwargs.get("explanation", ""))
    return render(request, "federation/plan_form.html", {**context, "form": form})


@web_view
@require_GET
def plan_detail(request, pk):
    user = request.user
    plan = selectors.plan_for(user, pk)
    my_orgs = list(represented_organisations(user).filter(id__in=plan.datasets.values("organisation_id")))
    series = selectors.plan_series(plan)
    return render(
        request,
        "federation/plan_detail.html",
        {
            **_role_context(user),
            "plan": plan,
            "progress": selectors.plan_progress(plan),
            "datasets": plan.datasets.select_related("organisation"),
            "series": series,
            "rounds": series["rounds"],
            "can_request": plan.status == TrainingPlan.Status.ACTIVE and access.may_request_round(user, plan),
            # Pause/resume: an administrator or a representative of a party with a dataset in it.
            "can_steer": access.is_administrator(user) or bool(my_orgs),
            "standing_orgs": my_orgs,
            "standing": plan.standing_approvals.select_related("organisation").order_by("-given_at"),
        },
    )


@web_view
@require_POST
def round_request(request, pk):
    user = request.user
    plan = selectors.plan_for(user, pk)
    try:
        round = round_services.round_request(actor=user, plan=plan)
    except (NotFound, PermissionDenied):
        raise
    except ApplicationError as exc:
        return _refused(request, exc, reverse("web:plan_detail", args=[pk]))
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
@require_POST
def plan_pause(request, pk):
    plan = selectors.plan_for(request.user, pk)
    try:
        plan_services.plan_pause(actor=request.user, plan=plan, reason=request.POST.get("reason", ""))
    except (NotFound, PermissionDenied):
        raise
    except ApplicationError as exc:
        return _refused(request, exc, reverse("web:plan_detail", args=[pk]))
    messages.success(request, _("Plan paused: no round or retry is requested until it is resumed."))
    return redirect("web:plan_detail", pk=pk)


@web_view
@require_POST
def plan_resume(request, pk):
    plan = selectors.plan_for(request.user, pk)
    try:
        plan, nxt = round_services.plan_resume(actor=request.user, plan=plan)
    except (NotFound, PermissionDenied):
        raise
    except ApplicationError as exc:
        return _refused(request, exc, reverse("web:plan_detail", args=[pk]))
    if nxt is not None and nxt.status == TrainingRound.Status.BLOCKED:
        messages.error(
            request,
            _("Plan resumed, but round %(number)s is blocked by governance: %(reason)s") % {"number": nxt.number, "reason": nxt.reason},
        )
    else:
        messages.success(
            request,
            _("Plan resumed; round %(number)s requested.") % {"number": nxt.number} if nxt is not None else _("Plan resumed."),
        )
    return redirect("web:plan_detail", pk=pk)


@web_view
@require_http_methods(["GET", "POST"])
def standing_approval(request, pk, org_slug):
    user = request.user
    plan = selectors.plan_for(user, pk)
    org = _party_org(plan.agreement, org_slug)
    require_representative(user, organisation=org, agreement=plan.agreement, action="give standing approvals")
    form = forms.StandingApprovalForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            round_services.standing_approval_give(actor=user, plan=plan, organisation=org, **form.cleaned_data)
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            forms.apply_service_errors(form, exc)
        else:
            messages.success(request, _("%(org)s gave a standing approval for '%(plan)s'.") % {"org": org.name, "plan": plan.name})
            return redirect(_safe_next(request, reverse("web:plan_detail", args=[pk])))
    return render(
        request,
        "federation/standing_approval.html",
        {"plan": plan, "organisation": org, "form": form, "progress": selectors.plan_progress(plan)},
    )


# --- Rounds -----------------------------------------------------------------------------------


@web_view
@require_GET
def round_list(request):
    user = request.user
    status = request.GET.get("status") or None
    if status and status not in TrainingRound.Status.values:
        status = None
    page = Paginator(selectors.round_list_for(user, status), 50).get_page(request.GET.get("page"))
    return render(
        request,
        "federation/round_list.html",
        {**_role_context(user), "page": page, "status": status, "statuses": TrainingRound.Status.choices},
    )


def _round_live_context(user, round) -> dict:
    """Everything on the round page that changes while the round runs: progress, the
    decisions, the budget on the ledger, whether the user still has to decide."""
    return {
        "round": round,
        "plan": round.plan,
        "decisions": selectors.round_decisions(round),
        "needed": selectors.approvals_needed(round),
        "undecided_orgs": [
            o
            for o in access.round_deciders(user, round)
            if not RoundApproval.objects.filter(round=round, organisation=o).exists()
        ],
        "reservations": selectors.round_reservations(round),
        **selectors.round_progress(round),
        "partners_online": agent_services.partners_online(round),
    }


@web_view
@require_GET
def round_detail(request, pk):
    user = request.user
    round = selectors.round_for(user, pk)
    return render(
        request,
        "federation/round_detail.html",
        {
            **_role_context(user),
            "checks": selectors.report_checks(round),
            "report": round.governance_report or {},
            **_round_live_context(user, round),
        },
    )


@web_view
@require_GET
def round_progress(request, pk):
    """The live part of the round page; htmx polls it every 2 s until the round is final
    (the final fragment carries no hx-trigger, so polling stops by itself). The decisions,
    the budget and the "your decision is needed" callout come along as out-of-band swaps,
    so no part of the page is left showing a round that has moved on."""
    round = selectors.round_for(request.user, pk)
    return render(request, "federation/_round_live.html", {**_round_live_context(request.user, round), "oob": True})


def _round_costs(round) -> list[dict]:
    """What the ledger will record for each dataset if this round runs (issue 17): the composed
    increase epsilon(spent + round) - epsilon(spent) at the dataset's delta, and the composed
    total after it, from the accountant's own budget check. A round's stand-alone epsilon
    overstates the cost of every round after the first: RDP composes sub-additively. A round
    already holding its reservation shows what that RESERVE entry recorded."""
    from accounting import chain
    from accounting import selectors as acct
    from accounting import services as accounting

    reserves = {e.dataset_id: e for e in acct.ledger_entries(round=round).filter(kind=chain.RESERVE)}
    rows = []
    for check in accounting.budget_check(round=round):
        dataset, spent, budget = check.dataset, float(check.spent), float(check.budget)
        entry = reserves.get(dataset.pk)
        if check.reserved and entry is not None:
            before = acct.ledger_entries(dataset=dataset).filter(seq__lt=entry.seq).order_by("-seq").first()
            after = float(entry.epsilon_spent_after)
            cost = after - float(before.epsilon_spent_after if before else 0.0)
            spent = after - cost
        else:
            cost = float(check.requested)
            after = spent + cost
        rows.append(
            {
                "dataset": dataset,
                "cost": cost,
                "spent": spent,
                "budget": budget,
                "remaining": budget - spent,
                "after": after,
                "left_after": budget - after,
                "fits": check.ok,
                "reserved": check.reserved,
            }
        )
    return rows


def _approval_context(user, round, org, *, approve_form=None, reject_form=None, standing_form=None) -> dict:
    decision = RoundApproval.objects.filter(round=round, organisation=org).select_related("decided_by").first()
    return {
        "round": round,
        "plan": round.plan,
        "organisation": org,
        "checks": selectors.report_checks(round),
        "report": round.governance_report or {},
        "costs": _round_costs(round),
        "progress": selectors.plan_progress(round.plan),
        "decisions": selectors.round_decisions(round),
        "needed": selectors.approvals_needed(round),
        "partners_online": agent_services.partners_online(round),
        "decision": decision,
        "open": round.status == TrainingRound.Status.AWAITING_APPROVAL and decision is None,
        "reject_form": reject_form or forms.RejectForm(),
        "standing_form": standing_form or forms.StandingApprovalForm(),
        "standing": round.plan.standing_approvals.filter(organisation=org, revoked_at__isnull=True),
    }


def _approval_target(user, pk, org_slug):
    """The round and the deciding organisation; non-members 404, other roles 403."""
    round = selectors.round_for(user, pk)
    org = _party_org(round.plan.agreement, org_slug)
    require_representative(user, organisation=org, agreement=round.plan.agreement, action="decide on this round")
    if not round.participants.filter(organisation=org).exists():
        raise NotFound(f"{org.name} has no dataset in round {round.number}.")
    return round, org


@web_view
@require_GET
def round_approval_pick(request, pk):
    """/rounds/<pk>/approval/: the approval page of the one organisation the user decides for."""
    user = request.user
    round = selectors.round_for(user, pk)
    orgs = access.round_deciders(user, round)
    if len(orgs) == 1:
        return redirect("web:round_approval", pk=pk, org_slug=orgs[0].slug)
    if not orgs:
        raise DjangoPermissionDenied(_("You represent no organisation whose data this round uses; only they decide on it."))
    return render(request, "federation/round_approval_pick.html", {"round": round, "orgs": orgs})


@web_view
@require_http_methods(["GET", "POST"])
def round_approval(request, pk, org_slug):
    """The representative's decision page: governance report, the epsilon this round costs
    each dataset against what was spent and what remains, the plan's remaining rounds.
    POST approves."""
    user = request.user
    round, org = _approval_target(user, pk, org_slug)
    if request.method == "POST":
        try:
            round_services.round_approve(actor=user, round=round, organisation=org)
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            round.refresh_from_db()
            messages.success(
                request,
                _("%(org)s approved round %(number)s. The round is %(status)s.")
                % {"org": org.name, "number": round.number, "status": round.get_status_display().lower()},
            )
        return redirect("web:round_approval", pk=pk, org_slug=org_slug)
    return render(request, "federation/round_approval.html", _approval_context(user, round, org))


@web_view
@require_POST
def round_reject(request, pk, org_slug):
    user = request.user
    round, org = _approval_target(user, pk, org_slug)
    form = forms.RejectForm(request.POST)
    if form.is_valid():
        try:
            round_services.round_reject(actor=user, round=round, organisation=org, reason=form.cleaned_data["reason"])
        except (NotFound, PermissionDenied):
            raise
        except ValidationFailed as exc:
            forms.apply_service_errors(form, exc)
        except ApplicationError as exc:
            messages.error(request, exc.message)
            return redirect("web:round_approval", pk=pk, org_slug=org_slug)
        else:
            messages.success(request, _("%(org)s rejected round %(number)s.") % {"org": org.name, "number": round.number})
            return redirect("web:round_approval", pk=pk, org_slug=org_slug)
    return render(request, "federation/round_approval.html", _approval_context(user, round, org, reject_form=form), status=400)
