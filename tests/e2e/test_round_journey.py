"""Issue 8's round journey through the real stack: every representative approves a round on
its approval page, and the round page, left open, follows it live to completion while
partner agents train and aggregate securely.

The browser talks to pytest-django's live server (threaded: one thread per request, so the
agents' long polls and htmx's polls are answered side by side; it also serves the static
files, htmx among them, from the source tree). Redis, a Celery worker and beat are real
processes (harness.localstack), and so are the three partner agents, which reach the
live server over HTTP. All of them share the file-SQLite test database.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from playwright.sync_api import expect

from federation.models import ModelVersion, StandingApproval, TrainingRound
from harness import simulation
from harness.localstack import local_stack
from tests.e2e.conftest import login, logout, new_page, no_csp_violations, screenshot

# "stack": the group of the integration tests, so that no two stacks of processes share
# the two cores at once (a starved agent would miss a phase deadline and drop out).
pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.xdist_group("stack")]

PARTNERS = 3
# Generous, but bounded: the round completes in well under a minute on an idle machine.
ROUND_TIMEOUT_MS = 150_000

# Records, in the page, each state the live section shows (status, and phase when there is
# one). It lives in `window`, so it also proves that the page was never reloaded.
RECORD_STATES = """() => {
  window.fedgovSeen = [];
  const record = () => {
    const section = document.getElementById("round-progress");
    if (!section) return;
    const phase = section.querySelector("#round-phase");
    const state = section.dataset.status + (phase ? ":" + phase.dataset.phase : "");
    if (window.fedgovSeen[window.fedgovSeen.length - 1] !== state) window.fedgovSeen.push(state);
  };
  record();
  new MutationObserver(record).observe(document.body, {childList: true, subtree: true});
}"""


@pytest.fixture
def federation(tmp_path, transactional_db):
    """Three partners with a partition of the breast-cancer data each, an active agreement
    needing every party's approval, a one-round plan; no standing approvals, so each
    representative decides in the browser. Everyone's password is "pw"."""
    table = simulation.default_table()
    partitions = simulation.partition(table, PARTNERS, tmp_path / "data")
    table.write(tmp_path / "all.csv")
    fed = simulation.setup_federation(
        partitions=partitions,
        schema=simulation.schema_for(table, tmp_path / "all.csv"),
        epsilon=8.0,
        rounds=1,
        prefix="e2e",
        phase_timeout=90,  # a slow agent is waited for, not dropped
    )
    StandingApproval.objects.filter(plan=fed.plan).delete()
    users = [fed.admin, *(d.organisation.memberships.get(role="representative").user for d in fed.datasets)]
    for user in users:
        user.set_password("pw")
        user.save(update_fields=["password"])
    return fed


@pytest.fixture
def stack(federation, live_server, transactional_db, tmp_path):
    """Redis, a Celery worker, beat and one agent per partner, against the live server.
    Torn down before the test database is flushed (it depends on transactional_db)."""
    with local_stack(log_dir=tmp_path / "logs", server=live_server.url) as stack:
        for i, (slug, token) in enumerate(federation.tokens.items()):
            stack.agent(
                name=f"agent-{i + 1}",
                token=token,
                data=federation.partitions[i],
                state_dir=tmp_path / "agents" / slug,
                poll_wait=2,
            )
        simulation.wait_for_agents(federation, timeout=90)
        yield stack


def test_representatives_approve_a_round_and_its_page_follows_it_live_to_completion(
    browser, live_server, page, federation, stack
):
    plan = federation.plan
    orgs = [d.organisation for d in federation.datasets]

    # The administrator requests the round and stays on its page from then on.
    watcher = new_page(browser, live_server.url)
    try:
        login(watcher, "e2e-admin")
        watcher.goto(f"/plans/{plan.pk}/")
        watcher.locator("#request-round").click()
        watcher.wait_for_url(re.compile(r"/rounds/\d+/$"))
        round = TrainingRound.objects.get(plan=plan, number=1)
        assert watcher.url.endswith(f"/rounds/{round.pk}/")
        expect(watcher.locator("#round-status")).to_have_text("Awaiting approval")
        expect(watcher.locator("#round-approvals .badge.warn")).to_have_count(PARTNERS)  # all pending
        watcher.evaluate(RECORD_STATES)

        # The round itself takes about a second once started, faster than the page polls.
        # Partner 3's agent is paused (SIGSTOP), as a slow partner would be, so that the
        # page can be seen mid-round: the first phase waits for it (the deadline is 90 s).
        slow_agent = stack.procs[f"agent-{PARTNERS}"].popen
        os.kill(slow_agent.pid, signal.SIGSTOP)
        try:
            # Each representative decides for its organisation, in its own session.
            for i, org in enumerate(orgs, start=1):
                login(page, f"e2e-rep{i}")
                page.goto("/inbox/")
                page.get_by_role("link", name=re.compile(f"Round 1 of {re.escape(plan.name)}")).click()
                expect(page.locator("h1")).to_contain_text("Round 1")
                page.locator("#approve").click()
                expect(page.locator("#decision")).to_contain_text(f"{org.name} approved this round (e2e-rep{i})")
                if i < PARTNERS:  # the round waits for every party
                    expect(page.locator("#round-status")).to_have_text("Awaiting approval")
                logout(page)

            # The page, never reloaded, shows the round running: two partners have answered
            # the first phase, the third not yet; every approval is in, the budget reserved.
            expect(watcher.locator("#round-status")).to_have_text("Running", timeout=60_000)
            expect(watcher.locator("#round-phase")).to_have_attribute("data-phase", "advertise_keys")
            expect(watcher.locator("#round-phase")).to_have_text("exchanging keys")  # in words, not the protocol's name
            expect(watcher.locator("#round-progress")).to_contain_text(
                f"{PARTNERS - 1} of {PARTNERS} answered the current phase", timeout=60_000
            )
            expect(watcher.locator("#time-left")).to_contain_text("left")
            rows = watcher.locator("#participants tbody tr")
            for dataset in federation.datasets[: PARTNERS - 1]:
                expect(rows.filter(has_text=dataset.slug).locator("td[data-label='Last step']")).to_contain_text(
                    "exchanging keys"
                )
            expect(rows.filter(has_text=federation.datasets[-1].slug).locator("td[data-label='Last step']")).to_have_text("—")
            expect(watcher.locator("#round-approvals .badge.ok")).to_have_count(PARTNERS)
            for dataset in federation.datasets:
                expect(watcher.locator("#reservations")).to_contain_text(f"{dataset.slug}: reserved")
            screenshot(watcher, "e-round-running-live")
        finally:
            os.kill(slow_agent.pid, signal.SIGCONT)

        # ...and follows it through the remaining phases to the end.
        progress = watcher.locator("#round-progress")
        expect(progress).to_have_attribute("data-final", "true", timeout=ROUND_TIMEOUT_MS)  # polling stops here
        expect(watcher.locator("#round-status")).to_have_text("Completed")
        seen = watcher.evaluate("window.fedgovSeen")
        assert seen is not None, "the round page was reloaded"
        assert seen[0] == "awaiting_approval" and "running:advertise_keys" in seen and seen[-1] == "completed", seen

        assert progress.get_attribute("hx-trigger") is None
        expect(rows).to_have_count(PARTNERS)
        for org, dataset in zip(orgs, federation.datasets):
            row = rows.filter(has_text=dataset.slug)
            expect(row).to_contain_text(org.name)
            expect(row.locator("td[data-label=Status]")).to_have_text("Finished")
        contributors = watcher.locator("#round-contributors")
        for org in orgs:
            expect(contributors).to_contain_text(org.slug)
        expect(watcher.locator("#round-metrics")).to_contain_text(re.compile(r"Accuracy \d+(\.\d+)? %"))
        version = ModelVersion.objects.get(round=round)
        expect(watcher.locator("#round-model")).to_contain_text(f"v{version.version}")
        expect(watcher.locator("#round-model")).to_contain_text(version.sha256[:12])
        # The rest of the page followed too: the budget is committed.
        for dataset in federation.datasets:
            expect(watcher.locator("#reservations")).to_contain_text(f"{dataset.slug}: committed")
        screenshot(watcher, "e-round-completed-live")
        # Each poll replaced the parts it carries, and added nothing else to the page.
        for part in ("#round-callout", "#round-progress", "#round-approvals"):
            expect(watcher.locator(part)).to_have_count(1)
        expect(watcher.locator("main")).not_to_contain_text("{")
        expect(watcher.locator(".stale-note")).to_have_count(0)  # fedgov.js: no poll left unanswered
        no_csp_violations(watcher)
    except Exception:
        print(stack.logs()[-8000:])  # shown by pytest with the failure
        raise
    finally:
        watcher.context.close()

    round.refresh_from_db()
    assert round.status == TrainingRound.Status.COMPLETED, round.reason
    assert sorted(round.metrics["contributors"]) == sorted(o.slug for o in orgs)
    assert round.metrics["accuracy"] is not None
