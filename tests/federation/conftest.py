"""The SecAgg round the federation service tests share: a simulated federation whose partners'
agents are enrolled, one round requested and started (budget reserved, protocol open, the
round RUNNING in advertise_keys). No Celery: the tests close phases by calling the services,
as the tasks would."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.db import transaction

from federation.models import TrainingRound
from federation.services.agents import agent_enrol
from federation.services.protocol import ADVERTISE
from federation.services.rounds import round_request, round_start
from harness import simulation


@dataclass
class SecAggRound:
    round: TrainingRound
    agents: dict  # organisation slug -> the agent's user
    keys: dict  # organisation slug -> its Ed25519 identity key
    parts: list  # the partners' data files
    fed: object  # simulation.setup_federation's result


@pytest.fixture
def secagg_round(tmp_path, db):
    """make(partners, prefix) -> SecAggRound, the round RUNNING in advertise_keys."""

    def make(partners: int, prefix: str) -> SecAggRound:
        table = simulation.default_table()
        parts = simulation.partition(table, partners, tmp_path)
        fed = simulation.setup_federation(
            partitions=parts, schema=simulation.schema_for(table, parts[0]), epsilon=8.0, rounds=1, prefix=prefix
        )
        agents, keys = {}, {}
        for i, dataset in enumerate(sorted(fed.datasets, key=lambda d: d.organisation.slug)):
            user = get_user_model().objects.get(username=f"{prefix}-agent{i + 1}")
            key = Ed25519PrivateKey.generate()
            agent_enrol(user=user, public_key_hex=key.public_key().public_bytes_raw().hex())
            agents[dataset.organisation.slug], keys[dataset.organisation.slug] = user, key
        round = round_request(actor=None, plan=fed.plan, system=True)
        with transaction.atomic():
            round = round_start(round_id=round.pk)
        assert round.status == TrainingRound.Status.RUNNING and round.phase == ADVERTISE
        return SecAggRound(round=round, agents=agents, keys=keys, parts=parts, fed=fed)

    return make
