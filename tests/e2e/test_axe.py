"""Accessibility: axe-core, run inside Chromium, finds no violation on the pages people work
on (issue 17), at a desktop, a tablet and a phone width.

axe-core is vendored in tests/e2e/vendor/ (MPL-2.0, licence beside it); it is injected in the
test only, through a context that bypasses the page's Content-Security-Policy. The site
itself never loads it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.services.agreements import agreement_create, agreement_submit
from federation.services.rounds import round_request
from tests.e2e.conftest import ARTIFACTS, login
from tests.factories import terms
from tests.web.helpers import complete_a_round

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core-4.14.1.min.js"
WIDTHS = (1280, 768, 390)
# WCAG 2.1 A and AA, plus axe's best practices (landmarks, one main, headings in order).
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}


def axe_violations(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    return page.evaluate("options => axe.run(document, options).then(r => r.violations)", AXE_OPTIONS)


def describe(violations: list[dict]) -> str:
    return "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} -> " + "; ".join(n["target"][0] if n["target"] else "?" for n in v["nodes"][:4])
        for v in violations
    )


@pytest.fixture
def axe_page(browser, live_server, transactional_db):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900}, bypass_csp=True)
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def test_axe_finds_no_violation_on_the_working_pages_at_three_widths(axe_page, cast):
    page = axe_page
    complete_a_round(cast)
    awaiting = round_request(actor=cast.admin, plan=cast.plan)
    to_sign = agreement_create(
        actor=cast.admin, parties=[cast.org_a, cast.org_b], auditors=[cast.auditor], **terms(title="Second study")
    )
    to_sign = agreement_submit(actor=cast.admin, agreement=to_sign)
    completed = cast.plan.rounds.get(number=1)
    pages = {
        "dashboard": "/",
        "inbox": "/inbox/",
        "approval": f"/rounds/{awaiting.pk}/approval/{cast.org_a.slug}/",
        "signing": f"/agreements/{to_sign.pk}/sign/{cast.org_a.slug}/",
        "ledger": f"/datasets/{cast.dataset_a.slug}/ledger/",
        "round": f"/rounds/{completed.pk}/",
        "plan": f"/plans/{cast.plan.pk}/",
    }
    found = {}
    for who in ("rep-a", "admin", "auditor"):
        login(page, who)
        for name, url in pages.items():
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 900})
                response = page.goto(url)
                if response.status != 200:
                    continue  # not this person's page (a signing page is a representative's)
                violations = axe_violations(page)
                if violations:
                    found[f"{who} {name} @{width}px"] = describe(violations)
        page.context.clear_cookies()
    assert not found, "\n\n".join(f"{where}:\n{text}" for where, text in found.items())
