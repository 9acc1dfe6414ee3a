"""The four browser journeys of the web UI (issue 8), each leaving a screenshot in
test-artifacts/. The round followed live to completion through the real stack, agents and
all, is in test_round_journey.py."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import pytest
from playwright.sync_api import expect

from accounting import bundle
from federation.models import Agreement, RoundApproval
from federation.services.rounds import round_request
from tests.e2e.conftest import ARTIFACTS, login, logout, no_csp_violations, screenshot
from tests.factories import OrganisationFactory, UserFactory, member
from tests.web.helpers import complete_a_round

# One xdist worker runs every browser test (make test uses --dist loadgroup): one Chromium.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


def test_administrator_registers_an_agreement_and_two_representatives_sign_it(page, cast):
    login(page, "admin")
    page.goto("/agreements/new/")
    page.fill("#id_title", "Sepsis early warning")
    page.fill("#id_purposes", "sepsis prediction research\nmodel evaluation")
    page.fill("#id_valid_from", (date.today() - timedelta(days=1)).isoformat())
    page.fill("#id_valid_until", (date.today() + timedelta(days=365)).isoformat())
    page.get_by_label("Org A", exact=True).check()
    page.get_by_label("Org B", exact=True).check()
    for field, value in (
        ("min_participants", "2"),
        ("min_noise_multiplier", "0.9"),
        ("max_clip_norm", "1.5"),
        ("max_delta", "1e-5"),
        ("max_epsilon_per_round", "1.5"),
        ("max_epsilon_budget", "8"),
        ("exit_notice_days", "14"),
    ):
        page.fill(f"#id_{field}", value)
    page.select_option("#id_approval_rule", "every_party")
    expect(page.locator("#field-approval_quorum")).to_be_hidden()  # fedgov.js: k only for a quorum
    page.get_by_label("auditor", exact=True).check()
    page.fill("#id_data_retention", "Model updates deleted when the agreement ends.")
    # A bad delta first: the message appears next to the field, nothing is saved.
    page.fill("#id_max_delta", "2")
    page.get_by_role("button", name="Save the draft").click()
    expect(page.locator('ul.field-errors[data-field="max_delta"]')).to_contain_text("between 0 and 1")
    assert not Agreement.objects.filter(title="Sepsis early warning").exists()
    page.fill("#id_max_delta", "1e-5")
    page.get_by_role("button", name="Save the draft").click()
    expect(page.locator("#agreement-status")).to_have_text("Draft")
    page.locator("#submit-for-signature").click()
    expect(page.locator("#agreement-status")).to_have_text("Awaiting signatures")
    terms_hash = page.locator("#terms-hash").inner_text().strip()
    agreement = Agreement.objects.get(title="Sepsis early warning")
    assert terms_hash == agreement.terms_hash and re.fullmatch(r"[0-9a-f]{64}", terms_hash)
    no_csp_violations(page)
    logout(page)

    for username, org in (("rep-a", "Org A"), ("rep-b", "Org B")):
        login(page, username)
        page.goto("/inbox/")
        page.get_by_role("link", name=re.compile("Sepsis early warning")).click()
        expect(page.locator("#sign-hash")).to_have_text(terms_hash)
        assert page.locator('#sign-form input[name="terms_hash"]').input_value() == terms_hash
        page.get_by_label("I have read these terms").check()
        page.get_by_role("button", name=f"Sign for {org}").click()
        expect(page.locator("article.message")).to_contain_text(f"{org} signed")
        if username == "rep-a":
            screenshot(page, "a-agreement-signed-by-first-party")
        logout(page)

    agreement.refresh_from_db()
    assert agreement.status == Agreement.Status.ACTIVE
    login(page, "admin")
    page.goto(f"/agreements/{agreement.pk}/")
    expect(page.locator("#agreement-status")).to_have_text("Active")
    expect(page.locator("#parties")).to_contain_text("signed")
    screenshot(page, "a-agreement-active")
    no_csp_violations(page)


def test_auditor_verifies_a_ledger_sees_the_plot_downloads_the_bundle_and_changes_nothing(page, cast):
    complete_a_round(cast)
    login(page, "auditor")
    page.goto(f"/datasets/{cast.dataset_a.slug}/ledger/")
    expect(page.locator("#verify-result")).to_contain_text("Not verified")
    page.locator("#verify-now").click()
    expect(page.locator("#verify-result")).to_contain_text("OK org-a-records")
    plot = page.locator("#epsilon-plot svg")
    expect(plot).to_be_visible()
    assert plot.locator("path").count() >= 2
    assert plot.locator("path").first.get_attribute("d").startswith("M")
    with page.expect_download() as info:
        page.locator("#download-bundle").click()
    download = info.value
    target = ARTIFACTS / download.suggested_filename
    download.save_as(str(target))
    assert re.fullmatch(r"fedgov-audit-org-a-records-\d{8}T\d{6}Z\.json", download.suggested_filename)
    report = bundle.verify(json.loads(target.read_text()))
    assert [c.dataset for c in report.chains] == ["org-a-records"]
    screenshot(page, "b-auditor-ledger-verified")

    # Read-only everywhere: the only POST forms are "log out", "verify now" and the language
    # switcher (the auditor's own UI language, no governance state).
    for url in (
        "/",
        f"/agreements/{cast.agreement.pk}/",
        f"/datasets/{cast.dataset_a.slug}/",
        f"/plans/{cast.plan.pk}/",
        "/history/",
    ):
        page.goto(url)
        roles = page.locator('form[method="post"]').evaluate_all("forms => forms.map(f => f.dataset.role || f.action)")
        assert set(roles) <= {"logout", "verify", "language"}, (url, roles)
        expect(page.get_by_role("button", name=re.compile("Amend|Suspend|Terminate|Raise|Approve|Sign|Request"))).to_have_count(0)
    no_csp_violations(page)


def test_a_representative_of_another_organisation_cannot_open_the_first_ones_approval_page(page, cast):
    round = round_request(actor=cast.admin, plan=cast.plan)
    stranger_org = OrganisationFactory(slug="org-z", name="Org Z")
    member(UserFactory(username="rep-z"), stranger_org)
    url = f"/rounds/{round.pk}/approval/{cast.org_a.slug}/"

    login(page, "rep-z")  # no party to the agreement: the round's existence is not revealed
    response = page.goto(url)
    assert response.status == 404
    expect(page.locator("h1")).to_contain_text("404")
    screenshot(page, "c-stranger-gets-404")
    logout(page)

    login(page, "rep-b")  # a party, but not Org A's representative
    response = page.goto(url)
    assert response.status == 403
    expect(page.locator("h1")).to_contain_text("403")
    expect(page.locator(".error-page")).to_contain_text("You are not a representative of Org A")
    screenshot(page, "c-other-party-gets-403")
    assert not RoundApproval.objects.exists()


def test_a_representative_approves_a_round_on_its_approval_page(page, cast):
    round = round_request(actor=cast.admin, plan=cast.plan)
    login(page, "rep-a")
    page.goto("/inbox/")
    page.get_by_role("link", name=re.compile(f"Round {round.number} of")).click()
    expect(page.locator("#round-costs")).to_contain_text("org-a-records")
    expect(page.locator("#round-costs svg.budget-bar-svg")).to_have_count(3)
    expect(page.locator("#governance-report li.check-pass")).to_have_count(len(round.governance_report["checks"]))
    page.set_viewport_size({"width": 820, "height": 1180})  # a tablet
    screenshot(page, "d-approval-page-tablet")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.locator("#approve").click()
    expect(page.locator("#decision")).to_contain_text("Org A approved this round")
    assert RoundApproval.objects.get(round=round, organisation=cast.org_a).decision == "approve"
    # The round page's progress section polls itself while the round is live.
    page.goto(f"/rounds/{round.pk}/")
    progress = page.locator("#round-progress")
    assert progress.get_attribute("hx-trigger") == "every 2s"
    with page.expect_response(lambda r: r.url.endswith(f"/rounds/{round.pk}/progress/"), timeout=6_000):
        pass
    expect(page.locator("#round-progress")).to_contain_text("Awaiting approval")
    screenshot(page, "d-round-approved")
    no_csp_violations(page)
