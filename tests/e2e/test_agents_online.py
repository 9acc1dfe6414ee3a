"""Agents you can see (#16 item 2), in the browser: three real partner agents poll the live
server; one is stopped; the representative deciding on the next round reads "2 of 3 partners
online" on the approval page, and which partner's agent is offline, before approving.

The agents are real processes (`python -m federation.agent`) reaching pytest-django's live
server over HTTP, as in the round journey; no Celery is needed since nothing here starts a
round. The online window is shortened (FEDGOV_AGENT_ONLINE_SECONDS) so that the stopped agent
goes offline within seconds rather than a minute.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from federation.agent.http import VERSION as AGENT_VERSION
from federation.models import AgentStatus, StandingApproval
from federation.services import agents as agent_services
from federation.services.rounds import round_request
from harness import simulation
from harness.localstack import django_env, start_agent, stop
from tests.e2e.conftest import login, no_csp_violations, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.xdist_group("stack")]

PARTNERS = 3
ONLINE_SECONDS = 8


@pytest.fixture
def federation(tmp_path, transactional_db):
    table = simulation.default_table()
    partitions = simulation.partition(table, PARTNERS, tmp_path / "data")
    table.write(tmp_path / "all.csv")
    fed = simulation.setup_federation(
        partitions=partitions, schema=simulation.schema_for(table, tmp_path / "all.csv"), epsilon=8.0, rounds=2, prefix="avail"
    )
    StandingApproval.objects.filter(plan=fed.plan).delete()  # the representative decides in the browser
    for dataset in fed.datasets:
        user = dataset.organisation.memberships.get(role="representative").user
        user.set_password("pw")
        user.save(update_fields=["password"])
    return fed


@pytest.fixture
def agents(federation, live_server, settings, tmp_path):
    settings.FEDGOV_AGENT_ONLINE_SECONDS = ONLINE_SECONDS
    env = django_env()
    procs = []
    try:
        for i, (slug, token) in enumerate(federation.tokens.items()):
            procs.append(
                start_agent(
                    env, tmp_path / "logs", name=f"agent-{i + 1}", server=live_server.url, token=token,
                    data=federation.partitions[i], state_dir=tmp_path / "agents" / slug, poll_wait=1,
                )
            )
        simulation.wait_for_agents(federation, timeout=90)
        yield procs
    finally:
        for proc in procs:
            stop(proc.popen)


def _online(federation) -> set[str]:
    statuses = AgentStatus.objects.filter(organisation__slug__in=federation.tokens)
    return {s.organisation.slug for s in statuses.select_related("organisation") if agent_services.is_online(s)}


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def test_a_representative_sees_two_of_three_partners_online_while_one_agent_is_stopped(page, federation, agents):
    slugs = list(federation.tokens)
    _wait_until(lambda: _online(federation) == set(slugs), 30, "the three agents did not all poll")
    stopped_org = federation.datasets[2].organisation
    stop(agents[2].popen)  # the third partner's agent is stopped
    _wait_until(lambda: _online(federation) == set(slugs[:2]), ONLINE_SECONDS * 3, "the stopped agent is still online")

    round = round_request(actor=federation.admin, plan=federation.plan)
    deciding = federation.datasets[0].organisation
    login(page, deciding.memberships.get(role="representative").user.username)
    page.goto(f"/rounds/{round.pk}/approval/{deciding.slug}/")
    online = page.locator("#partners-online")
    expect(online).to_contain_text("2 of 3 partners online")
    expect(online).to_contain_text(f"{stopped_org.name}’s agent last polled")
    expect(page.locator("#approve")).to_be_visible()  # before anyone approves
    screenshot(page, "approval-two-of-three-partners-online")

    # The agents page: the representative's own agent, online, with the version it runs.
    page.goto("/agents/")
    row = page.locator(f"#agent-{deciding.slug}")
    expect(row).to_have_attribute("data-online", "true")
    expect(row).to_contain_text(AGENT_VERSION)
    expect(page.locator(f"#agent-{stopped_org.slug}")).to_have_count(0)
    no_csp_violations(page)
