"""Reports: the ledger and history as CSV, and the agreement's privacy report."""

from __future__ import annotations

import csv
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounting.models import LedgerEntry, SignedHead
from federation.models import GovernanceEvent
from federation.services.common import event_record

pytestmark = pytest.mark.django_db


def _rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode("utf-8")
    assert body.startswith("\ufeff")  # Excel reads UTF-8 with its byte-order mark
    return list(csv.reader(io.StringIO(body[1:])))


def test_ledger_csv_has_one_row_per_entry_and_the_page_links_to_it(cast, completed_round, as_user):
    client = as_user(cast.rep_a)
    page = client.get(f"/datasets/{cast.dataset_a.slug}/ledger/")
    assert f'action="/datasets/{cast.dataset_a.slug}/ledger/export.csv"' in page.content.decode()
    response = client.get(f"/datasets/{cast.dataset_a.slug}/ledger/export.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = _rows(response)
    entries = list(LedgerEntry.objects.filter(dataset=cast.dataset_a).order_by("seq"))
    assert rows[0][:3] == ["seq", "created_at", "kind"]
    assert len(rows) == 1 + len(entries) >= 3
    assert [r[2] for r in rows[1:]] == [e.kind for e in entries]
    assert rows[1][1] == entries[0].created_at.isoformat().replace("+00:00", "+00:00")
    assert rows[-1][-1] == entries[-1].entry_hash


def test_ledger_csv_honours_kind_round_and_dates(cast, completed_round, as_user):
    client = as_user(cast.admin)
    url = f"/datasets/{cast.dataset_a.slug}/ledger/export.csv"
    rows = _rows(client.get(url, {"kind": "COMMIT"}))
    assert [r[2] for r in rows[1:]] == ["COMMIT"]
    rows = _rows(client.get(url, {"round": completed_round.pk}))
    assert {r[2] for r in rows[1:]} == {"RESERVE", "COMMIT"}
    assert len(_rows(client.get(url, {"date_to": "2000-01-01"}))) == 1  # the header only
    assert client.get(url, {"date_from": "2030-01-02", "date_to": "2030-01-01"}).status_code == 400
    assert client.get(url, {"kind": "STEAL"}).status_code == 400


def test_ledger_csv_readers_are_the_ledger_readers(cast, completed_round, as_user, stranger_rep):
    url = f"/datasets/{cast.dataset_a.slug}/ledger/export.csv"
    assert as_user(cast.auditor).get(url).status_code == 200
    assert as_user(cast.rep_b).get(url).status_code == 403  # sees the dataset, not its ledger
    assert as_user(stranger_rep).get(url).status_code == 404
    assert as_user(None).get(url).status_code == 302


def test_history_csv_filters_and_neutralises_formulas(cast, as_user):
    event_record(kind=GovernanceEvent.Kind.ROUND_REQUESTED, message='=HYPERLINK("http://x")', agreement=cast.agreement)
    client = as_user(cast.rep_a)
    page = client.get("/history/")
    assert 'action="/history/export.csv"' in page.content.decode()
    rows = _rows(client.get("/history/export.csv", {"agreement": cast.agreement.pk}))
    assert rows[0][:3] == ["id", "created_at", "kind"]
    assert len(rows) - 1 == GovernanceEvent.objects.filter(agreement=cast.agreement).count()
    messages = [r[10] for r in rows[1:]]
    assert '\'=HYPERLINK("http://x")' in messages
    assert not any(m.startswith(("=", "+", "-", "@")) for m in messages)
    rows = _rows(client.get("/history/export.csv", {"kind": "agreement_signed"}))
    assert {r[2] for r in rows[1:]} == {"agreement_signed"} and len(rows) == 4


def test_history_csv_readers_are_the_history_readers(cast, as_user, stranger_rep):
    url = f"/history/export.csv?agreement={cast.agreement.pk}"
    from federation import access

    expected = 200 if access.may_read_history(cast.auditor, cast.agreement) else 403
    assert as_user(cast.auditor).get(url).status_code == expected
    assert as_user(cast.rep_b).get(url).status_code == 200
    assert as_user(stranger_rep).get(url).status_code == 404
    rows = _rows(as_user(stranger_rep).get("/history/export.csv"))
    assert rows[1:] == []  # nothing of an agreement it has no part in


def test_privacy_report_shows_parties_budgets_rounds_verification_and_fingerprint(cast, completed_round, as_user):
    client = as_user(cast.admin)
    heads, entries = SignedHead.objects.count(), LedgerEntry.objects.count()
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/agreements/{cast.agreement.pk}/report/")
    assert response.status_code == 200
    html = response.content.decode()
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []  # the report only reads: no signed head, no event, no session write
    assert (SignedHead.objects.count(), LedgerEntry.objects.count()) == (heads, entries)
    for org in (cast.org_a, cast.org_b, cast.org_c):
        assert org.name in html
    assert cast.agreement.terms_hash in html
    assert html.count('data-role="verification"') == 3 and "does not verify" not in html
    assert html.count("<svg") >= 3
    assert html.count('data-role="bundle-sha256"') == 3
    assert "css/report.css" in html


def test_privacy_report_fingerprint_is_the_downloaded_bundles_hash(cast, completed_round, as_user):
    import hashlib
    import json

    from accounting.dp_events import canonical_json
    from federation.web import reports

    fp = reports._bundle_fingerprint(cast.dataset_a)
    body = as_user(cast.admin).get(f"/datasets/{cast.dataset_a.slug}/ledger/bundle/").content
    # Computed from the downloaded bundle as an auditor would: canonical JSON of its chains.
    chains = json.loads(body)["chains"]
    assert hashlib.sha256(canonical_json(chains).encode()).hexdigest() == fp["sha256"]
    assert chains and chains[0]["entries"]


def test_privacy_report_shows_a_tampered_ledger_as_not_verifying(cast, completed_round, as_user):
    from accounting import triggers

    entry = LedgerEntry.objects.filter(dataset=cast.dataset_a).order_by("seq").last()
    triggers.APPEND_ONLY.uninstall(connection)  # an edit behind the application's back
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {LedgerEntry._meta.db_table} SET epsilon_spent_after = 0 WHERE id = %s", [entry.pk])
    finally:
        triggers.APPEND_ONLY.install(connection)
    html = as_user(cast.admin).get(f"/agreements/{cast.agreement.pk}/report/").content.decode()
    assert html.count("does not verify") == 1


def test_privacy_report_shows_a_representative_only_its_own_ledgers(cast, completed_round, as_user, stranger_rep):
    url = f"/agreements/{cast.agreement.pk}/report/"
    html = as_user(cast.rep_a).get(url).content.decode()
    assert html.count('class="report-section dataset-section"') == 1
    assert f'data-dataset="{cast.dataset_a.slug}"' in html
    assert as_user(stranger_rep).get(url).status_code == 404
    assert as_user(cast.outsider).get(url).status_code == 404
