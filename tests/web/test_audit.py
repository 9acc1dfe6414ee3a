"""The auditor's journey: read-only everywhere, ledgers verified on demand, epsilon plotted
from the ledger, signed bundles downloaded; and the live round view."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.urls import reverse

from accounting import bundle, triggers
from accounting.models import LedgerEntry
from federation.models import GovernanceEvent, TrainingRound
from tests.tamper import force_update
from tests.web.test_pages import PAGES

pytestmark = pytest.mark.django_db

POST_FORM = re.compile(r"<form\b[^>]*\bmethod=\"post\"[^>]*>", re.I)


def test_auditors_see_no_form_that_changes_anything(cast, completed_round, as_user):
    """The only POST forms an auditor meets: log out, "verify now" (which only reads) and the
    language switcher (which changes only the auditor's own UI language)."""
    client = as_user(cast.auditor)
    opened = 0
    for page, (build, expected) in PAGES.items():
        if expected["auditor"] != 200 or page == "ledger_bundle":
            continue
        html = client.get(build(cast, completed_round)).content.decode()
        opened += 1
        for form in POST_FORM.findall(html):
            assert any(f'data-role="{role}"' in form for role in ("logout", "verify", "language")), (page, form)
        assert "data-changes" not in html, page
    assert opened >= 15


def test_auditor_verifies_a_ledger_and_sees_the_result(cast, completed_round, as_user):
    client = as_user(cast.auditor)
    url = reverse("web:ledger", args=[cast.dataset_a.slug])
    assert "Not verified in this session" in client.get(url).content.decode()
    entries, events = LedgerEntry.objects.count(), GovernanceEvent.objects.count()
    response = client.post(reverse("web:ledger_verify", args=[cast.dataset_a.slug]))
    assert response.status_code == 302 and response["Location"].endswith("#verification")
    html = client.get(url).content.decode()
    assert 'id="verify-result"' in html and "verified" in html and "OK org-a-records: 3 entries" in html
    assert (LedgerEntry.objects.count(), GovernanceEvent.objects.count()) == (entries, events)  # it only read


def test_verification_names_the_first_bad_entry_of_a_tampered_chain(cast, completed_round, as_user):
    triggers.APPEND_ONLY.uninstall(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE accounting_ledgerentry SET epsilon_spent_after = 0.001 WHERE dataset_id = %s AND seq = 2",
                [cast.dataset_a.pk],
            )
    finally:
        triggers.APPEND_ONLY.install(connection)
    client = as_user(cast.auditor)
    client.post(reverse("web:ledger_verify", args=[cast.dataset_a.slug]))
    html = client.get(reverse("web:ledger", args=[cast.dataset_a.slug])).content.decode()
    assert "does not verify" in html
    assert "First bad entry: <a" in html and "#2</a>" in html
    assert 'class="bad-entry"' in html


def test_the_ledger_page_plots_epsilon_spent_against_the_budget(cast, completed_round, as_user):
    html = as_user(cast.auditor).get(reverse("web:ledger", args=[cast.dataset_a.slug])).content.decode()
    svg = re.search(r'<figure class="chart-figure" id="epsilon-plot">(.*?)</figure>', html, re.S).group(1)
    assert svg.count("<path ") == 2  # spent, and the budget line
    assert "epsilon spent" in svg and "budget" in svg
    spent_path = re.search(r'<g class="series series-0 spent">.*?<path d="([^"]+)"', svg, re.S).group(1)
    assert spent_path.startswith("M") and spent_path.count("L") >= 2  # a step line through three entries


def test_the_ledger_is_filterable_by_kind_and_round(cast, completed_round, as_user):
    client = as_user(cast.auditor)
    url = reverse("web:ledger", args=[cast.dataset_a.slug])
    html = client.get(url + "?kind=GRANT").content.decode()
    table = re.search(r'<table class="responsive" id="ledger-entries">(.*?)</table>', html, re.S).group(1)
    assert "Budget granted" in table and "Committed" not in table
    html = client.get(url + f"?round={completed_round.pk}").content.decode()
    table = re.search(r'<table class="responsive" id="ledger-entries">(.*?)</table>', html, re.S).group(1)
    assert "Reserved" in table and "Committed" in table and "Budget granted" not in table
    assert "No entry matches" in client.get(url + "?round=999999").content.decode()


def test_the_audit_bundle_downloads_and_verifies_offline(cast, completed_round, as_user):
    response = as_user(cast.auditor).get(reverse("web:ledger_bundle", args=[cast.dataset_a.slug]))
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="fedgov-audit-org-a-records-')
    document = json.loads(response.content)
    assert [c["dataset"] for c in document["chains"]] == ["org-a-records"]
    report = bundle.verify(document)  # raises BundleError on the first bad entry or head
    assert [(c.dataset, c.entries) for c in report.chains] == [("org-a-records", 3)]


def test_the_governance_history_follows_the_auditors_access(cast, as_user):
    client = as_user(cast.auditor)
    html = client.get(reverse("web:event_list")).content.decode()
    assert "Agreement sent for signature" in html
    force_update(type(cast.agreement), cast.agreement.pk, auditor_access="ledger")
    html = client.get(reverse("web:event_list")).content.decode()
    assert "Agreement sent for signature" not in html and "covers budget ledgers only" in html
    assert client.get(reverse("web:event_list") + f"?agreement={cast.agreement.pk}").status_code == 403
    # The ledger itself stays readable.
    assert client.get(reverse("web:ledger", args=[cast.dataset_a.slug])).status_code == 200


def test_the_approval_page_shows_cost_spent_remaining_and_the_report(cast, waiting_round, as_user):
    html = as_user(cast.rep_a).get(reverse("web:round_approval", args=[waiting_round.pk, cast.org_a.slug])).content.decode()
    costs = re.search(r'<table class="responsive" id="round-costs">(.*?)</table>', html, re.S).group(1)
    for d in cast.datasets:
        assert d.slug in costs
    eps = waiting_round.governance_report["checks"]
    eps = next(c for c in eps if c["name"] == "dp_parameters")["details"]["epsilon_per_round"]
    assert f"ε {eps['org-a-records']:.3g}" in costs
    assert costs.count('class="budget-bar-svg') == 3 and 'class="bar-cost"' in costs
    assert 'id="governance-report"' in html and 'data-check="budget"' in html
    assert "5 of 5 rounds of the plan remain" in html
    assert 'id="approve-form"' in html and 'id="reject-form"' in html and 'id="standing-form"' in html


def test_the_round_page_polls_its_progress_until_the_round_is_final(cast, waiting_round, as_user):
    client = as_user(cast.rep_b)
    html = client.get(reverse("web:round_detail", args=[waiting_round.pk])).content.decode()
    progress_url = reverse("web:round_progress", args=[waiting_round.pk])
    assert f'hx-get="{progress_url}" hx-trigger="every 2s"' in html
    force_update(TrainingRound, waiting_round.pk, status="running", phase="masked_input")
    waiting_round.participant_links.filter(dataset=cast.datasets[0]).update(status="active", last_phase="masked_input")
    from django.utils import timezone

    TrainingRound.objects.filter(pk=waiting_round.pk).update(phase_deadline=timezone.now() + timezone.timedelta(seconds=95))
    fragment = client.get(progress_url).content.decode()
    assert fragment.lstrip().startswith('<section id="round-progress"')
    assert 'hx-trigger="every 2s"' in fragment and "masked_input" in fragment
    assert "1 of 3 answered the current phase" in fragment
    assert re.search(r'id="time-left">1 min 3\d s left', fragment)
    force_update(TrainingRound, waiting_round.pk, status="completed", phase="")
    fragment = client.get(progress_url).content.decode()
    assert "hx-trigger" not in fragment and 'data-final="true"' in fragment


def test_the_plan_page_plots_accuracy_and_epsilon_per_round(cast, completed_round, as_user):
    html = as_user(cast.rep_a).get(reverse("web:plan_detail", args=[cast.plan.pk])).content.decode()
    accuracy = re.search(r'id="accuracy-plot">(.*?)</figure>', html, re.S).group(1)
    assert "<svg" in accuracy and "<circle" in accuracy and "81.0 %" in html
    epsilon = re.search(r'id="epsilon-rounds-plot">(.*?)</figure>', html, re.S).group(1)
    assert epsilon.count("<path ") == 6  # three datasets spent, three budget lines
    charged = re.search(r'id="epsilon-charged-plot">(.*?)</figure>', html, re.S).group(1)
    assert charged.count("<path ") == 3 and "org-a-records" in charged


def test_the_plan_and_round_pages_draw_the_accuracy_interval_as_a_band(cast, completed_round, as_user):
    client = as_user(cast.rep_a)
    html = client.get(reverse("web:plan_detail", args=[cast.plan.pk])).content.decode()
    assert "<polygon" not in re.search(r'id="accuracy-plot">(.*?)</figure>', html, re.S).group(1)  # no interval, no band
    fragment = client.get(reverse("web:round_progress", args=[completed_round.pk])).content.decode()
    assert 'id="round-accuracy-interval"' not in fragment
    force_update(TrainingRound, completed_round.pk, metrics={"accuracy": 0.81, "accuracy_interval": [0.74, 0.88]})
    html = client.get(reverse("web:plan_detail", args=[cast.plan.pk])).content.decode()
    accuracy = re.search(r'id="accuracy-plot">(.*?)</figure>', html, re.S).group(1)
    assert accuracy.count('<polygon class="band"') == 1 and "with 95% interval" in accuracy
    fragment = client.get(reverse("web:round_progress", args=[completed_round.pk])).content.decode()
    figure = re.search(r'id="round-accuracy-interval">(.*?)</figure>', fragment, re.S).group(1)
    assert '<polygon class="band"' in figure and "74.0 %" in figure and "88.0 %" in figure
