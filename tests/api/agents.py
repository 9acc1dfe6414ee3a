"""A round with enrolled partner agents, driven through the services, for the agent API's
bad-input tests: each organisation of the cast has an agent user, an enrolled Ed25519 key and
an `agent`-scoped token."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from rest_framework.test import APIClient

from federation.models import Membership, TrainingRound
from federation.services.agents import agent_enrol
from federation.services.protocol import ADVERTISE, EVALUATE
from federation.services.rounds import round_approve, round_request, round_start
from federation.services.tokens import token_issue
from tests.factories import Cast, UserFactory, build_cast, member
from tests.tamper import force_update

EVAL_NOISE = 8.0


@dataclass
class AgentWorld:
    cast: Cast
    round: TrainingRound
    agents: dict  # organisation slug -> agent user
    keys: dict  # organisation slug -> token key
    signing_keys: dict  # organisation slug -> the agent's enrolled Ed25519 private key

    def client(self, slug: str = "org-a") -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {self.keys[slug]}")
        return client

    def url(self, phase: str, round_id: int | None = None) -> str:
        return f"/api/v1/agent/rounds/{self.round.pk if round_id is None else round_id}/{phase}/"

    def to_phase(self, phase: str) -> TrainingRound:
        """Put the round in `phase` as the coordinator would have (the evaluation phase follows
        aggregation, the others follow one another while RUNNING)."""
        status = TrainingRound.Status.AGGREGATING if phase == EVALUATE else TrainingRound.Status.RUNNING
        force_update(TrainingRound, self.round.pk, status=status, phase=phase)
        self.round.refresh_from_db()
        return self.round


def build_agent_world() -> AgentWorld:
    cast = build_cast(plan_overrides={"eval_noise_multiplier": EVAL_NOISE})
    agents, keys, signing_keys = {}, {}, {}
    for org in (cast.org_a, cast.org_b, cast.org_c):
        user = cast.agent_a if org == cast.org_a else member(UserFactory(username=f"agent-{org.slug}"), org, Membership.Role.AGENT)
        key = Ed25519PrivateKey.generate()
        agent_enrol(user=user, public_key_hex=key.public_key().public_bytes_raw().hex())
        agents[org.slug], signing_keys[org.slug] = user, key
        _, keys[org.slug] = token_issue(actor=user, user=user, scopes=["agent"], name="agent")
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL, round.reason
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        round.refresh_from_db()
        if round.status == TrainingRound.Status.AWAITING_APPROVAL:
            round_approve(actor=rep, round=round, organisation=org)
    with transaction.atomic():
        round = round_start(round_id=round.pk)
    assert round.status == TrainingRound.Status.RUNNING and round.phase == ADVERTISE, round.reason
    return AgentWorld(cast=cast, round=round, agents=agents, keys=keys, signing_keys=signing_keys)
