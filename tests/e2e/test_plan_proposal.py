"""In a browser: an administrator chooses the agreement, the datasets, the rounds and the
model, has the planner propose the schedule, reads its explanation and the projected epsilon
per dataset, and defines the plan from the proposal (issues #15 item 1, #16 item 4)."""

from __future__ import annotations

from playwright.sync_api import expect

from federation.models import TrainingPlan
from tests.e2e.conftest import login, no_csp_violations, screenshot


def test_administrator_defines_a_plan_from_the_proposal(page, cast):
    login(page, "admin")
    page.goto("/plans/new/")
    page.select_option("#id_agreement", str(cast.agreement.pk))
    page.fill("#id_name", "Proposed in the browser")
    page.select_option("#id_purpose", "model evaluation")
    for dataset in cast.datasets:
        page.get_by_label(f"{dataset.slug} (", exact=False).check()
    page.fill("#id_rounds_total", "3")
    page.context.set_default_timeout(240_000)  # the planner takes seconds (tens on a busy machine)
    with page.expect_navigation(timeout=240_000):
        page.get_by_role("button", name="Propose a schedule").click()
    expect(page.locator("#plan-explanation")).to_contain_text("noise multiplier z =")
    expect(page.locator("#plan-projection")).to_contain_text("Projected epsilon of the whole plan")
    proposed_z = page.input_value("#id_noise_multiplier")
    assert float(proposed_z) >= cast.agreement.min_noise_multiplier
    screenshot(page, "plan-proposal")
    with page.expect_navigation(timeout=240_000):
        page.get_by_role("button", name="Define the plan").click()
    expect(page.get_by_role("heading", name="Proposed in the browser")).to_be_visible()
    plan = TrainingPlan.objects.get(name="Proposed in the browser")
    assert plan.noise_multiplier == float(proposed_z)
    assert plan.explanation.startswith("features in [-1, 1]")
    page.get_by_text("Why this schedule").click()
    expect(page.locator("#plan-explanation")).to_contain_text("features in [-1, 1]")  # the plan page shows why
    no_csp_violations(page)
