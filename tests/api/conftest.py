"""The API's test world: the shared cast, plus the objects every endpoint addresses, and a
token (scopes read, trigger, approve) for each actor."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from federation.models import ApiToken, Membership, ModelVersion, TrainingRound
from federation.services.agreements import agreement_create, agreement_submit
from federation.services.plans import plan_create
from federation.services.rounds import round_request
from federation.services.tokens import token_issue
from tests.factories import Cast, build_cast, terms

ALL_SCOPES = [ApiToken.Scope.READ, ApiToken.Scope.TRIGGER, ApiToken.Scope.APPROVE]

# The columns of every permission table, in this order.
ROLES = ("admin", "rep_owner", "rep_other", "auditor", "other_auditor", "agent", "outsider", "anonymous")


@dataclass
class World:
    cast: Cast
    draft_agreement: object
    pending_agreement: object
    round: TrainingRound
    idle_plan: object
    model_version: ModelVersion
    membership: Membership
    spare_token: ApiToken
    keys: dict = field(default_factory=dict)

    def user(self, role: str):
        c = self.cast
        return {
            "admin": c.admin,
            "rep_owner": c.rep_a,
            "rep_other": c.rep_b,
            "auditor": c.auditor,
            "other_auditor": c.other_auditor,
            "agent": c.agent_a,
            "outsider": c.outsider,
            "anonymous": None,
        }[role]

    def client(self, role: str) -> APIClient:
        client = APIClient()
        if role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {self.keys[role]}")
        return client


def make_model_version(plan, version: int = 0, params: bytes = b"\x00\x00\x80?" * 4) -> ModelVersion:
    return ModelVersion.objects.create(plan=plan, version=version, params=params, sha256=hashlib.sha256(params).hexdigest())


def build_world() -> World:
    cast = build_cast()
    admin = cast.admin
    draft = agreement_create(actor=admin, parties=[cast.org_a, cast.org_b], auditors=[cast.auditor], **terms(title="Draft terms"))
    pending = agreement_create(
        actor=admin, parties=[cast.org_a, cast.org_b], auditors=[cast.auditor], **terms(title="Pending terms")
    )
    pending = agreement_submit(actor=admin, agreement=pending)
    round = round_request(actor=admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL, round.governance_report
    idle_plan = plan_create(
        actor=admin,
        agreement=cast.agreement,
        name="Idle plan",
        purpose="model evaluation",
        datasets=cast.datasets,
        model_spec={"kind": "logreg"},
        rounds_total=3,
        noise_multiplier=1.1,
        clip_norm=1.0,
        batch_size=32,
        local_steps=5,
    )
    spare, _ = token_issue(actor=cast.rep_a, user=cast.rep_a, scopes=["read"], name="spare")
    world = World(
        cast=cast,
        draft_agreement=draft,
        pending_agreement=pending,
        round=round,
        idle_plan=idle_plan,
        model_version=make_model_version(cast.plan),
        membership=Membership.objects.get(user=cast.rep_a, organisation=cast.org_a),
        spare_token=spare,
    )
    for role in ROLES:
        user = world.user(role)
        if user is not None:
            _, world.keys[role] = token_issue(actor=user, user=user, scopes=ALL_SCOPES, name="tests")
    return world


@pytest.fixture(autouse=True)
def _token_cache_on(settings):
    """The API as production runs it: token rows cached (a shared cache, federation/token_cache.py),
    so every API test also checks that its changes reach the next request."""
    settings.FEDGOV_API_TOKEN_CACHE_SECONDS = 30


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Throttle counters live in the cache: every test starts with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def world(db) -> World:
    return build_world()
