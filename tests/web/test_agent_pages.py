"""Agents you can see, on the pages: the agents page (administrators: every organisation's;
a representative: its own), the organisation page's agent section, "N of M partners online"
on the approval and round pages, and refusals and left-out partners in plain words."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from federation.models import AgentStatus, Membership, TrainingRound
from federation.services.agent_rounds import agent_refuse
from federation.services.agents import agent_enrol
from federation.services.rounds import round_approve, round_start
from tests.factories import UserFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def agents(cast) -> dict:
    """Every organisation's agent enrolled; Org C's last polled ten minutes ago."""
    users = {}
    for org in (cast.org_a, cast.org_b, cast.org_c):
        user = cast.agent_a if org == cast.org_a else member(UserFactory(username=f"agent-{org.slug}"), org, Membership.Role.AGENT)
        agent_enrol(user=user, public_key_hex=Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex())
        users[org.slug] = user
    AgentStatus.objects.filter(organisation=cast.org_c).update(last_seen_at=timezone.now() - timedelta(minutes=10), software_version="0.2.0")
    return users


def test_the_approval_page_says_how_many_partners_are_online(cast, agents, waiting_round, as_user):
    page = as_user(cast.rep_a).get(reverse("web:round_approval", args=[waiting_round.pk, cast.org_a.slug])).content.decode()
    assert "2 of 3 partners online" in page
    assert "Org C’s agent last polled" in page


def test_the_round_page_says_how_many_partners_are_online_while_it_is_live(cast, agents, waiting_round, as_user):
    page = as_user(cast.rep_b).get(reverse("web:round_detail", args=[waiting_round.pk])).content.decode()
    assert "2 of 3 partners online" in page


def test_the_agents_page_shows_every_agent_to_an_administrator_and_its_own_to_a_representative(cast, agents, as_user):
    admin_page = as_user(cast.admin).get(reverse("web:agent_list")).content.decode()
    for slug in ("org-a", "org-b", "org-c"):
        assert f'id="agent-{slug}"' in admin_page
    assert 'id="agent-org-c" data-online="false"' in admin_page
    assert 'id="agent-org-a" data-online="true"' in admin_page
    assert "0.2.0" in admin_page
    rep_page = as_user(cast.rep_a).get(reverse("web:agent_list")).content.decode()
    assert 'id="agent-org-a"' in rep_page
    assert 'id="agent-org-b"' not in rep_page and 'id="agent-org-c"' not in rep_page
    assert as_user(cast.auditor).get(reverse("web:agent_list")).status_code == 403


def test_the_organisation_page_shows_its_agent_to_its_representatives_only(cast, agents, as_user):
    url = reverse("web:organisation_detail", args=[cast.org_a.slug])
    assert 'id="agent-section"' in as_user(cast.rep_a).get(url).content.decode()
    assert 'id="agent-section"' in as_user(cast.admin).get(url).content.decode()
    assert 'id="agent-section"' not in as_user(cast.rep_b).get(url).content.decode()


def test_the_round_page_says_who_was_left_out_and_why_a_partner_declined_in_plain_words(cast, agents, waiting_round, as_user):
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        round_approve(actor=rep, round=waiting_round, organisation=org)
    with transaction.atomic():
        round = round_start(round_id=waiting_round.pk)
    assert round.status == TrainingRound.Status.RUNNING, round.reason
    agent_refuse(user=agents["org-b"], round_id=round.pk, code="agreement_unknown", reason="agreement 7 is not one this organisation holds")
    page = as_user(cast.rep_a).get(reverse("web:round_detail", args=[round.pk])).content.decode()
    assert 'id="left-out-org-c-records"' in page and "agent offline since" in page
    assert "declined: its agent does not hold this agreement&#x27;s terms" in page
    agents_page = as_user(cast.rep_b).get(reverse("web:agent_list")).content.decode()
    assert "agreement_unknown" in agents_page and "agreement 7 is not one this organisation holds" in agents_page
