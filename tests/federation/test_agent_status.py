"""Agents you can see (#16 item 2): what the coordinator records of each organisation's agent,
the terms handed out on every poll, and rounds that start without partners whose agent is
offline (nothing reserved on their data) or are blocked saying why."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounting.models import LedgerEntry
from federation.agent import http as agent_http
from federation.agent.runner import Agent
from federation.models import AgentStatus, Membership, RoundParticipant, RoundProtocol, RoundTicket, TrainingRound
from federation.services import agents as agent_services
from federation.services.agent_rounds import agent_refuse
from federation.services.agents import agent_enrol, agent_terms
from federation.services.agreements import agreement_amend, agreement_create, agreement_sign, agreement_submit
from federation.services.rounds import round_approve, round_request, round_start
from federation.services.tokens import token_issue
from tests.factories import UserFactory, build_cast, member, terms

pytestmark = pytest.mark.django_db


def _enrol_all(cast) -> dict:
    """An agent user, enrolled key and agent token per organisation of the cast."""
    tokens = {}
    for org in (cast.org_a, cast.org_b, cast.org_c):
        user = cast.agent_a if org == cast.org_a else member(UserFactory(username=f"agent-{org.slug}"), org, Membership.Role.AGENT)
        agent_enrol(user=user, public_key_hex=Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex())
        _, tokens[org.slug] = token_issue(actor=user, user=user, scopes=["agent"], name="agent")
    return tokens


def _go_offline(org, minutes: int = 10) -> None:
    AgentStatus.objects.filter(organisation=org).update(last_seen_at=timezone.now() - timedelta(minutes=minutes))


def _approved_round(cast) -> TrainingRound:
    round = round_request(actor=cast.admin, plan=cast.plan)
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        round_approve(actor=rep, round=round, organisation=org)
    round.refresh_from_db()
    assert round.status == TrainingRound.Status.APPROVED, round.reason
    return round


def _poll(token: str, user_agent: str = "fedgov-agent/9.1.0"):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get("/api/v1/agent/tasks/", {"wait": 0}, HTTP_USER_AGENT=user_agent)


# --- what is recorded ---------------------------------------------------------------------------


def test_enrolment_records_the_agent_as_enrolled_and_online():
    cast = build_cast()
    _enrol_all(cast)
    status = AgentStatus.objects.get(organisation=cast.org_a)
    assert status.enrolled_at is not None and status.last_seen_at is not None
    assert agent_services.is_online(status)
    assert not agent_services.is_online(status, now=timezone.now() + timedelta(seconds=61))


def test_a_poll_records_the_software_version_and_hands_out_the_terms():
    cast = build_cast()
    tokens = _enrol_all(cast)
    response = _poll(tokens["org-a"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["tasks"] == []
    assert [(t["agreement"], t["terms_hash"]) for t in body["terms"]] == [(cast.agreement.pk, cast.agreement.terms_hash)]
    status = AgentStatus.objects.get(organisation=cast.org_a)
    assert status.software_version == "9.1.0"
    assert status.terms_held == {str(cast.agreement.pk): cast.agreement.terms_hash}


def test_a_user_agent_that_is_not_the_agents_records_no_version():
    assert agent_services.agent_version("fedgov-agent/0.2.0") == "0.2.0"
    assert agent_services.agent_version("fedgov-agent/1.0 (linux)") == "1.0"
    assert agent_services.agent_version("curl/8.0") == ""
    assert agent_services.agent_version("fedgov-agent/<script>") == ""
    assert agent_services.agent_version("fedgov-agent/" + "9" * 65) == ""
    assert agent_http.USER_AGENT == f"fedgov-agent/{agent_http.VERSION}"


def test_the_last_poll_is_written_at_most_every_few_seconds():
    cast = build_cast()
    _enrol_all(cast)
    terms_now = agent_terms(cast.org_a)
    t0 = timezone.now() + timedelta(seconds=30)
    agent_services.agent_poll_record(organisation=cast.org_a, version="1", terms=terms_now, now=t0)
    with CaptureQueriesContext(connection) as queries:
        agent_services.agent_poll_record(organisation=cast.org_a, version="1", terms=terms_now, now=t0 + timedelta(seconds=2))
    assert not [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert AgentStatus.objects.get(organisation=cast.org_a).last_seen_at == t0
    agent_services.agent_poll_record(organisation=cast.org_a, version="1", terms=terms_now, now=t0 + timedelta(seconds=6))
    assert AgentStatus.objects.get(organisation=cast.org_a).last_seen_at == t0 + timedelta(seconds=6)


def test_an_agreement_signed_after_enrolment_reaches_the_agent_on_its_next_poll():
    cast = build_cast()
    tokens = _enrol_all(cast)
    new = agreement_submit(actor=cast.admin, agreement=agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Later terms")))
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b)):
        agreement_sign(actor=rep, agreement=new, organisation=org, terms_hash=new.terms_hash)
    new.refresh_from_db()
    held = {t["agreement"]: t["terms_hash"] for t in _poll(tokens["org-a"]).json()["terms"]}
    assert held == {cast.agreement.pk: cast.agreement.terms_hash, new.pk: new.terms_hash}
    assert AgentStatus.objects.get(organisation=cast.org_a).terms_held[str(new.pk)] == new.terms_hash
    # Org C is no party to it: its agent is not handed those terms.
    assert {t["agreement"] for t in _poll(tokens["org-c"]).json()["terms"]} == {cast.agreement.pk}


def test_an_amendment_being_signed_is_not_current_on_the_agents_page_until_it_is():
    cast = build_cast()
    tokens = _enrol_all(cast)
    _poll(tokens["org-a"])
    agreement_amend(actor=cast.admin, agreement=cast.agreement, max_epsilon_per_round=3.0)
    (view,) = agent_services.agents_overview(cast.org_a.__class__.objects.filter(pk=cast.org_a.pk))
    assert view.terms == [{"agreement": cast.agreement.pk, "terms_hash": view.terms[0]["terms_hash"], "current": False}]
    # The amendment is not in force until signed: the agent's next poll hands out no terms for it.
    assert _poll(tokens["org-a"]).json()["terms"] == []


def test_the_agent_adopts_the_terms_of_each_poll():
    agent = SimpleNamespace(terms=[{"agreement": 1, "terms_hash": "a" * 64, "version": 1}])
    Agent.learn_terms(agent, [{"agreement": 1, "terms_hash": "a" * 64, "version": 1}, {"agreement": 2, "terms_hash": "b" * 64, "version": 1}])
    assert [t["agreement"] for t in agent.terms] == [1, 2]
    Agent.learn_terms(agent, None)  # an older coordinator sends none: keep what it has
    assert [t["agreement"] for t in agent.terms] == [1, 2]


# --- rounds start with the partners online -------------------------------------------------------


def test_a_round_starts_without_the_partner_whose_agent_is_offline_and_reserves_nothing_on_its_data():
    cast = build_cast()
    _enrol_all(cast)
    round = _approved_round(cast)
    _go_offline(cast.org_c)
    with transaction.atomic():
        round = round_start(round_id=round.pk)
    assert round.status == TrainingRound.Status.RUNNING, round.reason
    left = RoundParticipant.objects.get(round=round, dataset__organisation=cast.org_c)
    assert left.status == RoundParticipant.Status.LEFT_OUT
    assert round.metrics["left_out"]["org-c"]["reason"].startswith("agent offline since ")
    reserved = set(LedgerEntry.objects.filter(round_id=round.pk, kind="RESERVE").values_list("dataset__organisation__slug", flat=True))
    assert reserved == {"org-a", "org-b"}
    assert RoundProtocol.objects.get(round=round).config["roster"] == ["org-a", "org-b"]
    assert RoundTicket.objects.filter(participant__round=round).count() == 2
    assert round.events.filter(message__contains="org-c left out: agent offline since").exists()


def test_a_partner_without_an_enrolled_agent_is_left_out_before_anything_is_reserved():
    cast = build_cast()
    _enrol_all(cast)
    from federation.models import AgentIdentity

    AgentIdentity.objects.filter(organisation=cast.org_b).update(revoked_at=timezone.now())
    round = _approved_round(cast)
    with transaction.atomic():
        round = round_start(round_id=round.pk)
    assert round.status == TrainingRound.Status.RUNNING, round.reason
    assert round.metrics["left_out"] == {"org-b": {"dataset": "org-b-records", "reason": "no agent enrolled"}}
    assert not LedgerEntry.objects.filter(round_id=round.pk, dataset__organisation=cast.org_b).exists()


def test_a_round_is_blocked_saying_who_is_offline_when_the_agreements_minimum_no_longer_holds():
    cast = build_cast(agreement_terms={"min_participants": 3})
    _enrol_all(cast)
    round = _approved_round(cast)
    _go_offline(cast.org_c)
    with transaction.atomic():
        round = round_start(round_id=round.pk)
    assert round.status == TrainingRound.Status.BLOCKED
    assert round.reason.startswith("Only 2 of 3 participants have an agent online (org-c: agent offline since ")
    assert round.reason.endswith("; the agreement requires at least 3.")
    assert not LedgerEntry.objects.filter(round_id=round.pk).exists()
    assert not RoundParticipant.objects.filter(round=round, status=RoundParticipant.Status.LEFT_OUT).exists()


def test_a_round_is_blocked_when_the_secure_aggregation_threshold_no_longer_holds():
    cast = build_cast(plan_overrides={"secagg_threshold": 3})
    _enrol_all(cast)
    round = _approved_round(cast)
    _go_offline(cast.org_b)
    with transaction.atomic():
        round = round_start(round_id=round.pk)
    assert round.status == TrainingRound.Status.BLOCKED
    assert round.reason.endswith("; secure aggregation needs 3.")
    assert not LedgerEntry.objects.filter(round_id=round.pk).exists()


def test_an_offline_partner_still_has_to_approve_under_an_every_party_agreement():
    cast = build_cast()
    _enrol_all(cast)
    _go_offline(cast.org_c)
    round = round_request(actor=cast.admin, plan=cast.plan)
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b)):
        round_approve(actor=rep, round=round, organisation=org)
    round.refresh_from_db()
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL


def test_partners_online_counts_the_organisations_of_the_rounds_datasets():
    cast = build_cast()
    _enrol_all(cast)
    _go_offline(cast.org_b)
    round = round_request(actor=cast.admin, plan=cast.plan)
    online = agent_services.partners_online(round)
    assert str(online) == "2 of 3 partners online"
    assert [org.slug for org, _ in online.offline] == ["org-b"]


def test_a_message_from_the_agent_counts_as_a_sign_of_life():
    """Training can keep an agent from polling for a while; its messages keep it online."""
    cast = build_cast()
    _enrol_all(cast)
    with transaction.atomic():
        round = round_start(round_id=_approved_round(cast).pk)
    _go_offline(cast.org_a, minutes=2)
    assert not agent_services.is_online(AgentStatus.objects.get(organisation=cast.org_a))
    agent_refuse(user=cast.agent_a, round_id=round.pk, code="outside_terms", reason="noise below the floor")
    assert agent_services.is_online(AgentStatus.objects.get(organisation=cast.org_a))
