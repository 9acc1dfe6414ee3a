"""Reports: the ledger and the governance history as CSV, and an agreement's printable privacy report.

Who may download what is exactly who may read it on the page (`access`): a ledger's CSV for its
ledger's readers, a history CSV for the readers of that history. Every report only reads: the
privacy report replays each chain (`verify_dataset`) and computes the audit bundle's fingerprint
without signing, storing or logging anything.

CSV files are UTF-8 with a byte-order mark (Excel needs it to read UTF-8; other tools skip it),
one header row, one row per entry, times in ISO 8601 UTC. A text cell that a spreadsheet would
take for a formula (starting with = + - @, a tab or a carriage return) is prefixed with a single
quote (OWASP's CSV injection advice): a message typed by a user is data, never a formula.
"""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime

from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from .. import access
from ..forms_accounts import EventExportForm, LedgerExportForm
from ..i18n import verification_line
from ..selectors import agreements as agreement_selectors
from ..selectors import datasets as dataset_selectors
from ..selectors import events as event_selectors
from ..selectors import ledger as ledger_selectors
from ..selectors.common import date_range
from .base import role_context, web_view
from .dashboard import agreement_pk

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BOM = "\ufeff"


def safe_cell(value):
    """A cell as a spreadsheet should show it: text that would start a formula is quoted."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _Echo:
    """csv.writer writes into this and gets the line back (Django's streaming CSV recipe)."""

    def write(self, value: str) -> str:
        return value


def _csv_response(filename: str, header: list[str], rows) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def lines():
        yield BOM + writer.writerow(header)
        for row in rows:
            yield writer.writerow([safe_cell(v) for v in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _date_range(qs, data):
    """Narrow `qs` to the form's inclusive UTC date range."""
    return date_range(qs, date_from=data.get("date_from"), date_to=data.get("date_to"))


def _form_errors(form) -> HttpResponseBadRequest:
    text = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
    return HttpResponseBadRequest(f"Invalid filter: {text}\n", content_type="text/plain; charset=utf-8")


def _stamp() -> str:
    return timezone.now().strftime("%Y%m%dT%H%M%SZ")


LEDGER_HEADER = [
    "seq", "created_at", "kind", "round_id", "plan", "round_number", "accountant", "delta",
    "epsilon_spent_after", "epsilon_budget", "actor", "event", "payload", "prev_hash", "entry_hash",
]  # fmt: skip


@web_view
@require_GET
def ledger_csv(request, slug):
    """A dataset's ledger as CSV, with the ledger page's filters (kind, round) and a date range."""
    dataset = ledger_selectors.ledger_dataset_for(user=request.user, slug=slug)
    form = LedgerExportForm(request.GET)
    if not form.is_valid():
        return _form_errors(form)
    data = form.cleaned_data
    entries = ledger_selectors.ledger_entries(dataset=dataset, kind=data.get("kind") or None, round_id=data.get("round"))
    entries = _date_range(entries, data).order_by("seq")

    def rows():
        for e in entries.iterator(chunk_size=2000):
            plan, number = (e.round.plan.name, e.round.number) if e.round_id else ("", "")
            yield [
                e.seq, e.created_at, e.kind, e.round_id, plan, number, e.accountant, e.delta,
                e.epsilon_spent_after, e.epsilon_budget, e.actor, e.event, e.payload, e.prev_hash, e.entry_hash,
            ]  # fmt: skip

    return _csv_response(f"fedgov-ledger-{dataset.slug}-{_stamp()}.csv", LEDGER_HEADER, rows())


EVENT_HEADER = [
    "id", "created_at", "kind", "agreement_id", "agreement", "organisation", "round_id", "plan", "round_number",
    "actor", "message", "details",
]  # fmt: skip


@web_view
@require_GET
def event_csv(request):
    """The governance history as CSV, with the history page's filters (agreement, kind) and a
    date range. An agreement whose history the user may not read: 404 or 403, as on the page."""
    user = request.user
    agreements = event_selectors.history_agreements(user=user)
    form = EventExportForm(request.GET, agreements=agreements)
    if not form.is_valid():
        if "agreement" in form.errors and request.GET.get("agreement"):
            agreement_selectors.require_history_of(user=user, pk=agreement_pk(request.GET["agreement"]))
        return _form_errors(form)
    data = form.cleaned_data
    agreement = data.get("agreement")
    events = event_selectors.events_for(user=user, agreement=agreement, kind=data.get("kind") or None)
    events = _date_range(events, data).order_by("created_at", "id")

    def rows():
        for ev in events.iterator(chunk_size=2000):
            r = ev.round
            yield [
                ev.pk, ev.created_at, ev.kind, ev.agreement_id, ev.agreement.title if ev.agreement_id else "",
                ev.organisation.slug if ev.organisation_id else "", ev.round_id, r.plan.name if r else "",
                r.number if r else "", ev.actor_name, ev.message, ev.details,
            ]  # fmt: skip

    name = f"agreement-{agreement.pk}" if agreement else "all"
    return _csv_response(f"fedgov-history-{name}-{_stamp()}.csv", EVENT_HEADER, rows())


# --- The privacy report --------------------------------------------------------------------------


def chains_fingerprint(bundle: dict) -> str:
    """SHA-256 of the canonical JSON of a bundle's "chains" (entries, receipts, tickets and signed
    heads): the same for every export up to the same heads, whenever it was exported (the
    bundle's own export time and manifest signature change with each export). An auditor
    computes it from any bundle with `accounting.dp_events.canonical_json`."""
    from accounting.dp_events import canonical_json

    return hashlib.sha256(canonical_json(bundle["chains"]).encode("utf-8")).hexdigest()


def _bundle_fingerprint(dataset) -> dict | None:
    """The fingerprint of the audit bundle the ledger page's download would give now, or None
    when the chain has no signed head yet (then there is no bundle; nothing is signed here:
    ARCHITECTURE.md, Ledger 4)."""
    import io
    import json

    from accounting.audit import export_bundle

    if not ledger_selectors.has_signed_head(dataset=dataset):
        return None
    out = io.StringIO()
    summary = export_bundle(out, datasets=[dataset])
    text = out.getvalue()
    bundle = json.loads(text)
    return {
        "sha256": chains_fingerprint(bundle),
        "bytes": len(text.encode("utf-8")),
        "exported_at": bundle.get("exported_at", ""),
        "head_seq": summary["chains"].get(dataset.slug),
        "key_id": summary["key_id"],
    }


def _dataset_section(dataset) -> dict:
    from accounting.audit import verify_dataset

    series = ledger_selectors.ledger_series(dataset=dataset)
    result = verify_dataset(dataset)
    charged = [row for row in series if row["kind"] in ("GRANT", "RESERVE", "COMMIT", "RELEASE")]
    return {
        "dataset": dataset,
        "figures": dataset_selectors.budget_of(dataset=dataset),
        "series": series,
        "rows": charged,
        "verification": {
            "ok": result.ok,
            "line": verification_line(result),
            "entries": result.entries,
            "signed_heads": result.signed_heads,
            "bad_seq": result.bad_seq,
            "reason": result.error.reason if result.error else "",
        },
        "bundle": _bundle_fingerprint(dataset),
    }


@web_view
@require_GET
def agreement_report(request, pk: int):
    """An agreement's privacy report, printable on A4: its parties and signatures, each dataset's
    budget and spend over time, its rounds, each ledger's verification and its audit bundle's
    fingerprint. Readers: those of the agreement's governance history (404 or 403 otherwise);
    a dataset's section only for the readers of its ledger (a party's representative reads its
    own organisation's ledgers, not the other parties')."""
    user = request.user
    agreement = agreement_selectors.agreement_for(user=user, pk=pk)
    access.require_history_reader(user, agreement)
    rows = agreement_selectors.agreement_report_rows(agreement=agreement)
    readable = [d for d in rows["datasets"] if access.may_read_ledger(user, d)]
    hidden = [d for d in rows["datasets"] if d not in readable]
    context = {
        **role_context(user),
        "agreement": agreement,
        "parties": rows["parties"],
        "signatures": rows["signatures"],
        "sections": [_dataset_section(d) for d in readable],
        "hidden": hidden,
        "rounds": rows["rounds"],
        "generated_at": timezone.now(),
        "generated_by": user.username,
    }
    return render(request, "reports/privacy_report.html", context)
