"""services/aggregation.py: the plan's model storage, and a round's new model from the unmasked
sum (weighted FedAvg, then the plan's server step)."""

from __future__ import annotations

import base64
from datetime import timedelta

import numpy as np
import pytest
from django.db import transaction
from django.utils import timezone

from federation import secagg
from federation.learning import QuantSpec, init_params
from federation.learning.aggregate import secagg_input
from federation.models import ModelVersion, ProtocolMessage, ProtocolRelay, RoundParticipant, RoundProtocol, TrainingRound
from federation.services.agent_rounds import agent_submit
from federation.services.aggregation import (
    aggregate_compute,
    aggregate_store,
    latest_model,
    model_params,
    model_store,
    params_sha256,
    server_apply,
)
from federation.services.protocol import ADVERTISE, MASKED, SHARE, UNMASK
from federation.services.rounds import round_close_phase

pytestmark = pytest.mark.django_db


@pytest.fixture
def made(secagg_round):
    return secagg_round(3, "ag")


def test_a_plan_starts_from_version_0_seeded_by_its_id_and_its_latest_model_is_the_highest_version(made):
    plan = made.round.plan
    base = latest_model(plan)  # round_start stored it
    assert base.version == 0 and latest_model(plan).pk == base.pk
    np.testing.assert_array_equal(model_params(base), init_params(plan.model_spec, seed=plan.pk).astype(np.float32))
    params = model_params(base) + 1
    stored = model_store(plan=plan, version=3, params=params)
    assert stored.sha256 == params_sha256(params) and latest_model(plan).pk == stored.pk
    np.testing.assert_array_equal(model_params(stored), params.astype(np.float32))


def test_plain_fedavg_adds_the_server_learning_rate_times_the_update_and_an_optimiser_keeps_its_state(made):
    plan = made.round.plan
    base = latest_model(plan)
    update = np.linspace(-1, 1, model_params(base).size)
    with_optimiser = server_apply(plan, base, update)
    assert plan.server_optimizer and with_optimiser[1] is not None  # the simulation's plan has one
    plan.server_optimizer = {}  # plain FedAvg
    new, state = server_apply(plan, base, update)
    assert state is None
    np.testing.assert_allclose(new, model_params(base) + plan.server_learning_rate * update, rtol=1e-6)
    assert not np.allclose(new, with_optimiser[0])


def _drive_to_aggregate(made, updates):
    """Every partner sends its weighted, quantised update through the agent services; the
    phases are closed as the tasks would. Returns the round, in phase aggregate."""
    round, slugs = made.round, sorted(made.agents)
    cfg = RoundProtocol.objects.get(round=round).config
    config = secagg.RoundConfig(f"round-{round.pk}", tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])
    identity = {p: bytes.fromhex(k) for p, k in cfg["identity_keys"].items()}
    clients = {s: secagg.SecAggClient(config, party=s, signing_key=made.keys[s], identity_keys=identity) for s in slugs}
    spec = QuantSpec(**cfg["quant"])

    def close(phase):
        with transaction.atomic():
            return round_close_phase(round_id=round.pk, phase=phase, now=timezone.now() + timedelta(days=1))

    def relay(phase, party):
        rows = dict(ProtocolRelay.objects.filter(round=round, phase=phase).values_list("party", "body"))
        return base64.b64decode(rows.get(party) or rows[ProtocolRelay.EVERYONE])

    for s in slugs:
        agent_submit(user=made.agents[s], round_id=round.pk, phase=ADVERTISE, body=clients[s].advertise_keys())
    assert close(ADVERTISE) == f"opened {SHARE}"
    for s in slugs:
        agent_submit(user=made.agents[s], round_id=round.pk, phase=SHARE, body=clients[s].share_keys(relay(SHARE, s)))
    assert close(SHARE) == f"opened {MASKED}"
    for s in slugs:
        vector = secagg_input(updates[s], cfg["weights"][s], spec, np.random.default_rng(0))
        agent_submit(user=made.agents[s], round_id=round.pk, phase=MASKED, body=clients[s].masked_input(relay(MASKED, s), vector))
    assert close(MASKED) == f"opened {UNMASK}"
    for s in slugs:
        agent_submit(user=made.agents[s], round_id=round.pk, phase=UNMASK, body=clients[s].unmask(relay(UNMASK, s)))
    assert close(UNMASK) == "aggregating"
    return TrainingRound.objects.select_related("plan").get(pk=round.pk), cfg


def test_the_new_model_is_the_weighted_average_of_the_partners_updates_applied_to_the_base(made):
    slugs = sorted(made.agents)
    d = RoundProtocol.objects.get(round=made.round).config["vector_length"]
    rng = np.random.default_rng(7)
    updates = {s: rng.normal(0, 0.01, d) for s in slugs}
    round, cfg = _drive_to_aggregate(made, updates)
    base = latest_model(round.plan)

    result = aggregate_compute(round)
    assert result.outcome == "ready" and sorted(result.contributors) == slugs and result.dropouts == ()
    expected = sum(cfg["weights"][s] * updates[s] for s in slugs)
    # Within the quantisation's own bound (every partner survived: the weights sum to 1).
    np.testing.assert_allclose(result.update, expected, rtol=0, atol=QuantSpec(**cfg["quant"]).rounding_bound(len(slugs)))
    np.testing.assert_allclose(result.params, server_apply(round.plan, base, result.update)[0])
    assert round.phase == "aggregate" and not ModelVersion.objects.filter(round=round).exists()  # computing wrote nothing

    with transaction.atomic():
        locked = TrainingRound.objects.select_for_update().select_related("plan").get(pk=round.pk)
        model = aggregate_store(round=locked, aggregate=result)
    assert model.version == base.version + 1 and model.round_id == round.pk
    assert model.sha256 == params_sha256(result.params)
    assert not ProtocolMessage.objects.filter(round=round).exists()  # the unmask responses are used up
    round.refresh_from_db()
    assert round.metrics["contributors"] == list(result.contributors) and round.metrics["model_sha256"] == model.sha256
    assert set(RoundParticipant.objects.filter(round=round).values_list("status", flat=True)) == {RoundParticipant.Status.ACTIVE}
    # A redelivered task after the responses were used up finds the work done.
    TrainingRound.objects.filter(pk=round.pk).update(phase="evaluate")
    assert aggregate_compute(round).outcome == "already aggregated"
