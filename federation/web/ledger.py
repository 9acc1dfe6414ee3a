"""A dataset's budget ledger: its entries, its verification and its audit bundle."""

from __future__ import annotations

import io

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from .. import access, forms
from ..i18n import verification_line
from ..selectors import datasets as dataset_selectors
from ..selectors import ledger as ledger_selectors
from .base import role_context, web_view

VERIFY_SESSION_KEY = "fedgov.ledger_verifications"
LEDGER_PAGE_SIZE = 25


@web_view
@require_GET
def ledger(request, slug):
    """A dataset's budget ledger: entries (filterable, paginated), the epsilon plot, the
    verification status and the audit bundle download."""
    user = request.user
    dataset = ledger_selectors.ledger_dataset_for(user=user, slug=slug)
    form = forms.LedgerFilterForm(request.GET or None)
    kind = round_number = None
    if form.is_bound and form.is_valid():
        kind = form.cleaned_data.get("kind") or None
        round_number = form.cleaned_data.get("round")
    entries = ledger_selectors.ledger_entries(dataset=dataset, kind=kind, round_number=round_number)
    page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    series = ledger_selectors.ledger_series(dataset=dataset)
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
            **role_context(user),
            "dataset": dataset,
            "figures": dataset_selectors.budget_of(dataset=dataset),
            "form": form,
            "page": page,
            "query": query.urlencode(),
            "series": series,
            "verification": verification,
            "audits": access.audits(user, dataset.agreement),
            "ledger_key_fingerprint": _ledger_key_fingerprint(),
        },
    )


def _ledger_key_fingerprint() -> str:
    """The fingerprint of the key the bundle is signed with, for the auditor to compare with
    the key obtained out of band (never a reason to trust it: the page is the coordinator's)."""
    from accounting import heads, manifest

    return manifest.fingerprint(heads.key_id())


@web_view
@require_POST
def ledger_verify(request, slug):
    """Replay the chain now. Verification only reads, so every role that may see the ledger
    (read-only auditors too) may run it; the result is kept in the session and shown."""
    from accounting.audit import verify_dataset

    dataset = ledger_selectors.ledger_dataset_for(user=request.user, slug=slug)
    result = verify_dataset(dataset)
    stored = {
        "ok": result.ok,
        "line": verification_line(result),
        "entries": result.entries,
        "signed_heads": result.signed_heads,
        "bad_seq": result.bad_seq,
        "reason": result.error.reason if result.error else "",
        "at": timezone.now().isoformat(),
        "entries_now": ledger_selectors.ledger_size(dataset=dataset),
    }
    verifications = dict(request.session.get(VERIFY_SESSION_KEY, {}))
    verifications[dataset.slug] = stored
    request.session[VERIFY_SESSION_KEY] = verifications
    if result.ok:
        messages.success(
            request, _("Ledger of %(slug)s verified: %(line)s") % {"slug": dataset.slug, "line": verification_line(result)}
        )
    else:
        messages.error(
            request, _("Ledger of %(slug)s does NOT verify: %(line)s") % {"slug": dataset.slug, "line": verification_line(result)}
        )
    return redirect(reverse("web:ledger", args=[slug]) + "#verification")


@web_view
@require_GET
def ledger_bundle(request, slug):
    """The signed audit bundle of this dataset's chain, to verify offline with
    `manage.py verify_ledger --bundle FILE`."""
    from accounting.audit import export_bundle

    dataset = ledger_selectors.ledger_dataset_for(user=request.user, slug=slug)
    out = io.StringIO()
    export_bundle(out, datasets=[dataset])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = HttpResponse(out.getvalue(), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="fedgov-audit-{dataset.slug}-{stamp}.json"'
    return response
