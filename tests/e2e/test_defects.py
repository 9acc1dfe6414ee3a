"""Issue 17: the numbered defects of a first real session, one browser test each (each failed
before its fix)."""

from __future__ import annotations

import logging
import re
from datetime import date, timedelta

import pytest
from playwright.sync_api import expect

from accounting.services import budget as accounting_services
from federation import governance
from federation.models import Agreement, GovernanceEvent, TrainingRound
from federation.services.agreements import agreement_create
from federation.services.rounds import round_request
from federation.templatetags.fedgov_ui import eps
from tests.e2e.conftest import login, logout
from tests.factories import terms
from tests.tamper import force_update
from tests.web.helpers import complete_a_round

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]


def field_errors(page, field: str):
    return page.locator(f'ul.field-errors[data-field="{field}"]')


# 1. Editing a draft keeps its dates (and 7: the edit is history) -------------------------------


def test_editing_a_draft_shows_its_dates_saves_them_and_records_the_edit(page, cast):
    start, end = date(2026, 12, 1), date(2027, 11, 30)
    draft = agreement_create(
        actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Draft to edit", valid_from=start, valid_until=end)
    )
    login(page, "admin")
    page.goto(f"/agreements/{draft.pk}/edit/")
    assert page.locator("#id_valid_from").input_value() == "2026-12-01"  # a date input reads ISO only
    assert page.locator("#id_valid_until").input_value() == "2027-11-30"
    page.fill("#id_exit_notice_days", "21")
    page.get_by_role("button", name="Save the draft").click()
    expect(page.locator("article.message")).to_contain_text("Draft 'Draft to edit' updated")
    draft.refresh_from_db()
    assert (draft.valid_from, draft.valid_until, draft.exit_notice_days) == (start, end, 21)
    event = GovernanceEvent.objects.get(agreement=draft, kind=GovernanceEvent.Kind.AGREEMENT_EDITED)
    assert event.actor_name == "admin" and "exit_notice_days" in event.details["changed"]
    assert event.details["before"]["exit_notice_days"] == 30 and event.details["after"]["exit_notice_days"] == 21


# 2. The approval page shows what the ledger will record -----------------------------------------


def test_the_approval_page_shows_the_composed_increase_and_total_the_ledger_will_record(page, cast):
    complete_a_round(cast)
    second = round_request(actor=cast.admin, plan=cast.plan)
    check = {c.dataset.pk: c for c in accounting_services.budget_check(round=second)}[cast.dataset_a.pk]
    alone = governance.round_epsilon(cast.plan, cast.dataset_a)
    assert check.requested < alone * 0.9  # composition: the second round adds less than one round alone

    login(page, "rep-a")
    page.goto(f"/rounds/{second.pk}/approval/{cast.org_a.slug}/")
    row = page.locator("#round-costs tbody tr").filter(has_text=cast.dataset_a.slug)
    expect(row.locator("td.round-cost")).to_contain_text(f"ε {eps(check.requested)}")
    expect(row.locator("td.round-cost")).not_to_contain_text(eps(alone))
    expect(row.locator("td.round-after")).to_contain_text(eps(check.spent + check.requested))
    # The ledger then records exactly that increase.
    accounting_services.budget_reserve(round=second, actor=cast.admin)
    reserve = second.ledger_entries.get(dataset=cast.dataset_a, kind="RESERVE")
    assert f"{reserve.epsilon_spent_after:.3g}" == eps(check.spent + check.requested)


# 3. Every agreement error at once ---------------------------------------------------------------


def test_the_agreement_form_reports_every_field_and_cross_field_error_in_one_submit(page, cast):
    login(page, "admin")
    page.goto("/agreements/new/")
    page.fill("#id_title", "Everything wrong")
    page.fill("#id_purposes", "research")
    page.fill("#id_valid_until", (date.today() + timedelta(days=30)).isoformat())  # valid_from left empty
    page.get_by_label("Org A", exact=True).check()  # one party only
    for field, value in (
        ("min_participants", "2"),
        ("min_noise_multiplier", "0"),
        ("max_clip_norm", "1"),
        ("max_delta", "0.5"),
        ("max_epsilon_per_round", "9"),
        ("max_epsilon_budget", "8"),
        ("exit_notice_days", "14"),
    ):
        page.fill(f"#id_{field}", value)
    page.select_option("#id_approval_rule", "quorum")
    page.fill("#id_approval_quorum", "3")
    page.get_by_role("button", name="Save the draft").click()
    expect(field_errors(page, "valid_from")).to_contain_text("required")
    expect(field_errors(page, "min_noise_multiplier")).to_contain_text("greater than 0")
    expect(field_errors(page, "parties")).to_contain_text("at least two parties")
    expect(field_errors(page, "approval_quorum")).to_contain_text("exceeds the number of parties")
    expect(field_errors(page, "min_participants")).to_contain_text("exceeds the number of parties")
    expect(field_errors(page, "max_delta")).to_contain_text("between 0 and 1e-3")
    expect(field_errors(page, "max_epsilon_per_round")).to_contain_text("exceeds the maximum epsilon budget")
    assert not Agreement.objects.filter(title="Everything wrong").exists()


# 4. The ledger filters by the round number the page shows ---------------------------------------


def test_the_ledger_filters_by_the_round_number_shown_not_the_internal_id(page, cast):
    TrainingRound.objects.create(plan=cast.plan, number=5, status=TrainingRound.Status.FAILED)  # ids != numbers
    completed = complete_a_round(cast, number=1)
    assert completed.pk != 1
    login(page, "rep-a")
    page.goto(f"/datasets/{cast.dataset_a.slug}/ledger/")
    page.get_by_label("Round number").fill("1")
    page.get_by_role("button", name="Filter", exact=True).click()
    rows = page.locator("#ledger-entries tbody tr")
    expect(rows).to_have_count(2)  # its RESERVE and its COMMIT
    for i in range(2):
        expect(rows.nth(i).locator('td[data-label="Round"]')).to_contain_text("#1")


# 5. Counts and lists by role -----------------------------------------------------------------------


def test_representatives_see_every_party_and_the_auditor_sees_the_organisations(page, cast):
    login(page, "rep-a")
    page.goto("/agreements/")
    row = page.locator("tr").filter(has_text=cast.agreement.title)
    expect(row.locator('td[data-label="Parties"]')).to_have_text("3")
    logout(page)
    login(page, "auditor")
    page.goto("/organisations/")
    expect(page.locator("main")).not_to_contain_text("No organisation yet")
    for org in (cast.org_a, cast.org_b, cast.org_c):
        expect(page.locator("main table")).to_contain_text(org.name)


# 6. Small screens ---------------------------------------------------------------------------------


def test_the_ledger_table_scrolls_at_768px_and_phone_pages_stay_readable(page, cast):
    complete_a_round(cast)
    login(page, "auditor")
    page.set_viewport_size({"width": 768, "height": 1000})
    page.goto(f"/datasets/{cast.dataset_a.slug}/ledger/")
    # Every column is on screen, without a sideways scroll a touch screen does not show.
    reach = page.evaluate(
        """() => {
          const table = document.getElementById("ledger-entries");
          const wrap = table.closest(".table-wrap");
          const cells = [...table.querySelectorAll("td[data-label='Entry hash'], td[data-label='Actor']")];
          const right = Math.max(...cells.map(c => c.getBoundingClientRect().right));
          const edge = wrap.getBoundingClientRect().right;
          const scrolls = getComputedStyle(wrap).overflowX === "auto" && wrap.scrollWidth > wrap.clientWidth;
          return {fits: right <= edge + 1, scrolls, pageOverflow: document.documentElement.scrollWidth > window.innerWidth};
        }"""
    )
    assert reach["fits"] and not reach["pageOverflow"], reach

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/plans/{cast.plan.pk}/")
    heights = page.locator("#epsilon-rounds-plot svg text").evaluate_all(
        "texts => texts.map(t => t.getBoundingClientRect().height).filter(h => h > 0)"
    )
    assert heights and min(heights) >= 10, heights  # was about 7 px
    stray = page.locator("#plan-rounds td").evaluate_all(
        """cells => cells.filter(td => [...td.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()
                                                         && td.children.length > 0)).map(td => td.innerText)"""
    )
    assert not stray, stray  # a bare ", " between elements becomes a grid cell of its own
    rows = page.locator("nav.site li").evaluate_all(
        """items => {  // a new row starts below the bottom of the row before
          const boxes = items.map(li => li.getBoundingClientRect()).sort((a, b) => a.top - b.top);
          let rows = 0, bottom = -Infinity;
          for (const box of boxes) { if (box.top >= bottom - 1) { rows += 1; bottom = box.bottom; } else { bottom = Math.max(bottom, box.bottom); } }
          return rows;
        }"""
    )
    assert rows <= 2, rows  # brand, then one row of links (was three rows)


# 7. The rest of the list -------------------------------------------------------------------------


def contrast(page, selector: str) -> float:
    return page.locator(selector).first.evaluate(
        """el => {
          const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
          const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                             return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
          const style = getComputedStyle(el);
          const [a, b] = [lum(rgb(style.color)), lum(rgb(style.backgroundColor))];
          return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        }"""
    )


def test_dates_protocol_words_logout_favicon_contrast_focus_and_quiet_403s(page, cast, caplog):
    round = complete_a_round(cast, number=1)
    live = TrainingRound.objects.create(plan=cast.plan, number=2, status=TrainingRound.Status.RUNNING)
    force_update(TrainingRound, live.pk, phase="advertise_keys")
    icons = []
    page.on("response", lambda r: icons.append((r.url, r.status)) if "favicon" in r.url else None)
    login(page, "rep-a")

    page.goto("/agreements/")  # one date format: ISO
    row = page.locator("tr").filter(has_text=cast.agreement.title)
    expect(row.locator('td[data-label="Valid"]')).to_have_text(
        f"{cast.agreement.valid_from:%Y-%m-%d} – {cast.agreement.valid_until:%Y-%m-%d}"
    )
    page.goto(f"/rounds/{live.pk}/")  # the protocol's step in words
    expect(page.locator("#round-phase")).to_have_text("exchanging keys")
    assert "advertise_keys" not in page.locator("main").inner_text()
    page.goto(f"/rounds/{round.pk}/")

    page.goto("/")  # the role badge reads at 4.5:1 or better; the focus ring is visible
    assert contrast(page, "hgroup .badge") >= 4.5
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    ring = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert ring[0] != "none" and ring[1] >= 2, ring

    icon = page.locator('link[rel="icon"]').get_attribute("href")  # a favicon, served
    assert page.request.get(icon).status == 200
    assert not [u for u, status in icons if status >= 400], icons

    with caplog.at_level(logging.INFO, logger="django.request"):  # an expected 403 is one quiet line
        response = page.goto(f"/agreements/{cast.agreement.pk}/sign/{cast.org_b.slug}/")
    assert response.status == 403
    forbidden = [r for r in caplog.records if r.name == "django.request" and getattr(r, "status_code", None) == 403]
    assert forbidden and all(r.levelno == logging.INFO and not r.exc_info for r in forbidden), [
        (r.levelname, bool(r.exc_info)) for r in forbidden
    ]

    logout(page)  # logout says so
    expect(page.locator("article.message")).to_have_text("You have signed out.")


# 8. API docs and index -----------------------------------------------------------------------------


def test_the_api_answers_an_index_and_its_docs_group_operations_by_resource(page, cast):
    index = page.request.get("/api/v1/")
    assert index.status == 200
    body = index.json()
    assert {"agreements", "datasets", "plans", "rounds"} <= set(body["resources"])
    assert body["schema"].endswith("/api/schema/") and body["docs"].endswith("/api/docs/")
    assert page.request.get(body["resources"]["health"]).status == 200
    schema = page.request.get("/api/schema/?format=json").json()
    tags = {tag for operations in schema["paths"].values() for op in operations.values() for tag in op.get("tags", [])}
    assert "v1" not in tags
    assert {"agreements", "datasets", "plans", "rounds", "agent", "tokens"} <= tags
    page.goto("/api/docs/")
    expect(page.locator(".opblock-tag-section").first).to_be_visible()
    assert page.locator(".opblock-tag").count() >= 8
    assert re.search("agreements", page.locator(".swagger-ui").inner_text())
