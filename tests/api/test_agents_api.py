"""/api/v1/agents/: the partner agents a caller may see (administrators: all; representatives:
their own organisations'), with filters, and one agent with every refusal and its meaning."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.utils import timezone

from federation.models import AgentStatus, Membership
from federation.services.agent_rounds import agent_refuse
from federation.services.agents import agent_enrol
from tests.api.conftest import World
from tests.factories import UserFactory, member
from tests.tamper import force_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def enrolled(world: World) -> dict:
    c, users = world.cast, {}
    for org in (c.org_a, c.org_b, c.org_c):
        user = c.agent_a if org == c.org_a else member(UserFactory(username=f"agent-{org.slug}"), org, Membership.Role.AGENT)
        agent_enrol(user=user, public_key_hex=Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex())
        users[org.slug] = user
    AgentStatus.objects.filter(organisation=c.org_c).update(last_seen_at=timezone.now() - timedelta(hours=2))
    return users


def _slugs(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["organisation_slug"] for row in response.json()["results"]]


def test_an_administrator_lists_every_agent_and_a_representative_its_own(world: World, enrolled):
    assert _slugs(world.client("admin").get("/api/v1/agents/")) == ["org-a", "org-b", "org-c"]
    assert _slugs(world.client("rep_owner").get("/api/v1/agents/")) == ["org-a"]
    assert _slugs(world.client("auditor").get("/api/v1/agents/")) == []
    assert _slugs(world.client("agent").get("/api/v1/agents/")) == []


def test_the_list_filters_by_online_and_enrolment(world: World, enrolled):
    admin = world.client("admin")
    assert _slugs(admin.get("/api/v1/agents/", {"online": "true"})) == ["org-a", "org-b"]
    assert _slugs(admin.get("/api/v1/agents/", {"online": "false"})) == ["org-c"]
    assert _slugs(admin.get("/api/v1/agents/", {"enrolled": "true", "slug": "org-b"})) == ["org-b"]
    bad = admin.get("/api/v1/agents/", {"online": "maybe"})
    assert bad.status_code == 400 and bad.json()["code"] == "validation_failed"


def test_an_agent_shows_its_enrolment_last_poll_version_terms_and_refusals(world: World, enrolled):
    c = world.cast
    client = world.client("admin")
    poll = client.get("/api/v1/agent/tasks/")  # an administrator's token is no agent's
    assert poll.status_code == 403
    agent_client = _agent_client(enrolled["org-a"])
    assert agent_client.get("/api/v1/agent/tasks/", {"wait": 0}, HTTP_USER_AGENT="fedgov-agent/3.4.5").status_code == 200
    round = world.round
    force_update(type(round), round.pk, status="running", phase="advertise_keys")
    round.participant_links.update(status="active")
    agent_refuse(user=enrolled["org-a"], round_id=round.pk, code="terms_mismatch", reason="the ticket names terms v1; this agent holds v2")
    body = client.get(f"/api/v1/agents/{c.org_a.pk}/").json()
    assert body["enrolled"] is True and body["online"] is True and body["software_version"] == "3.4.5"
    assert body["public_key"] and body["enrolled_at"] and body["last_seen_at"]
    assert body["terms_held"] == [{"agreement": c.agreement.pk, "terms_hash": c.agreement.terms_hash, "current": True}]
    (refusal,) = body["refusals"]
    assert refusal["round"] == round.pk and refusal["code"] == "terms_mismatch" and refusal["dataset"] == "org-a-records"
    assert refusal["reason"] == "the ticket names terms v1; this agent holds v2"
    assert refusal["explanation"].startswith("the round was prepared under another version")
    offline = client.get(f"/api/v1/agents/{c.org_c.pk}/").json()
    assert offline["online"] is False and offline["refusals"] == []


def test_another_partys_representative_may_not_see_an_agent(world: World, enrolled):
    response = world.client("rep_other").get(f"/api/v1/agents/{world.cast.org_a.pk}/")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def _agent_client(user):
    from rest_framework.test import APIClient

    from federation.services.tokens import token_issue

    _, key = token_issue(actor=user, user=user, scopes=["agent"], name="agent")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client
