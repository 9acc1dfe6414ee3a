"""The privacy report prints to an A4 PDF with its charts, in real Chromium."""

from __future__ import annotations

import re

from tests.e2e.conftest import ARTIFACTS, login, no_csp_violations
from tests.web.helpers import complete_a_round

A4_POINTS = (595, 842)  # 210 x 297 mm


def test_the_privacy_report_prints_on_a4_with_its_charts(page, cast):
    complete_a_round(cast)
    login(page, "admin")
    page.goto(f"/agreements/{cast.agreement.pk}/")
    page.click("#privacy-report-link")
    page.wait_for_url(f"**/agreements/{cast.agreement.pk}/report/")
    assert page.locator(".dataset-section").count() == 3
    assert page.locator(".dataset-section .report-chart svg").count() == 3
    assert page.locator('[data-role="bundle-sha256"]').count() == 3
    no_csp_violations(page)

    page.emulate_media(media="print")
    assert page.locator("nav.site").is_hidden()  # the site's navigation does not print
    for chart in page.locator(".report-chart svg").all():
        assert chart.is_visible() and chart.bounding_box()["width"] > 200

    pdf = page.pdf(format="A4", print_background=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "privacy-report.pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF")
    pages = re.findall(rb"/Type\s*/Page[^s]", pdf)
    # One page for the terms and parties, then each dataset's section starts a page of its own.
    assert len(pages) >= 4
    boxes = {tuple(float(v) for v in m.groups()) for m in re.finditer(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)}
    assert boxes and all(abs(w - A4_POINTS[0]) <= 2 and abs(h - A4_POINTS[1]) <= 2 for w, h in boxes), boxes
    assert len(pdf) > 20_000  # vector charts and text, not an empty page
