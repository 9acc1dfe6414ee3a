"""The model a round hands its partners travels as raw float32 bytes (issue #19): 4 bytes a
parameter, where base64 inside the task's JSON cost 5.33 and a JSON parse of megabytes on
both sides. The task names it with its SHA-256 (the ticket pins the start model's), and only
an agent of an organisation active in the live round gets it."""

from __future__ import annotations

import hashlib
import io
import tracemalloc

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from federation.api.agent import spooled_body
from federation.models import ModelVersion, Organisation, RoundParticipant, TrainingRound
from federation.services import agent_rounds, aggregation, protocol
from federation.services.organisations import organisation_create
from federation.services.tokens import token_issue
from tests.api.agents import build_agent_world
from tests.factories import UserFactory, member
from tests.tamper import force_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    return build_agent_world()


def _advertise_task(world, slug="org-a") -> dict:
    (task,) = world.client(slug).get("/api/v1/agent/tasks/").json()["tasks"]
    assert task["phase"] == protocol.ADVERTISE
    return task


def test_the_task_names_the_model_and_the_agent_api_serves_its_raw_bytes(world):
    task = _advertise_task(world)
    model = task["payload"]["model"]
    assert "params" not in model  # no base64 copy of the parameters inside the JSON
    stored = ModelVersion.objects.get(plan=world.round.plan, version=model["version"])
    response = world.client().get(f"/api/v1/agent/{model['url']}")
    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    body = response.content
    d = world.round.protocol.config["vector_length"]
    assert len(body) == 4 * d  # exactly 4 bytes a parameter
    assert hashlib.sha256(body).hexdigest() == model["sha256"] == stored.sha256 == task["payload"]["ticket"]["start_model_sha256"]
    assert np.array_equal(np.frombuffer(body, dtype=np.float32), aggregation.model_params(stored))


def test_only_the_rounds_models_go_to_its_active_partners(world):
    url = _advertise_task(world)["payload"]["model"]["url"]
    # A version the round does not hand out (another round's model of the same plan).
    other = aggregation.model_store(plan=world.round.plan, version=7, params=np.zeros(world.round.protocol.config["vector_length"]))
    assert world.client().get(f"/api/v1/agent/rounds/{world.round.pk}/model/{other.version}/").status_code == 404
    # An agent of an organisation outside the round.
    outsider = organisation_create(actor=world.cast.admin, slug="org-x", name="Outsider")
    agent = member(UserFactory(username="agent-x"), outsider, "agent")
    _, key = token_issue(actor=agent, user=agent, scopes=["agent"], name="agent")
    world.keys["org-x"] = key
    assert world.client("org-x").get(f"/api/v1/agent/{url}").status_code in (403, 404)
    # A partner dropped from the round, and any partner once the round ended.
    RoundParticipant.objects.filter(round=world.round, dataset__organisation__slug="org-b").update(status=RoundParticipant.Status.DROPPED)
    assert world.client("org-b").get(f"/api/v1/agent/{url}").status_code == 404
    assert world.client("org-c").get(f"/api/v1/agent/{url}").status_code == 200
    force_update(TrainingRound, world.round.pk, status=TrainingRound.Status.COMPLETED)
    assert world.client("org-c").get(f"/api/v1/agent/{url}").status_code == 404
    assert Organisation.objects.filter(slug="org-x").exists()


def test_partners_fetching_the_model_at_once_share_one_copy_in_the_web_process(world):
    url = _advertise_task(world)["payload"]["model"]["url"]
    version = int(url.rstrip("/").rsplit("/", 1)[1])
    first = agent_rounds.agent_model(user=world.agents["org-a"], round_id=world.round.pk, version=version)
    second = agent_rounds.agent_model(user=world.agents["org-b"], round_id=world.round.pk, version=version)
    assert first is second  # one buffer, however many partners download it


class _Upload(io.BytesIO):
    """What the view reads a request body through (request.read)."""


def test_a_masked_input_is_spooled_to_a_file_not_held_in_memory():
    body = np.random.default_rng(0).integers(0, 2**32, size=1_000_000, dtype=np.uint32).tobytes()  # d = 10^6: 4 MB
    upload = _Upload(body)
    tracemalloc.start()
    try:
        with spooled_body(upload, limit=len(body)) as view:
            _, peak = tracemalloc.get_traced_memory()
            assert isinstance(view, memoryview) and view.readonly and len(view) == len(body)
            assert bytes(view[:64]) == body[:64] and bytes(view[-64:]) == body[-64:]
    finally:
        tracemalloc.stop()
    assert peak < len(body) // 8  # a chunk at a time, never the whole body
    with spooled_body(_Upload(body), limit=len(body) - 1) as view:
        assert view is None  # over the round's limit: refused, nothing parsed


def test_a_poll_names_the_model_without_loading_its_parameters(world):
    with CaptureQueriesContext(connection) as queries:
        task = _advertise_task(world)
    assert task["payload"]["model"]["sha256"]
    # n partners polling at once must not each hold a copy of the 4d-byte model.
    assert not [q["sql"] for q in queries if '"federation_modelversion"."params"' in q["sql"]]
