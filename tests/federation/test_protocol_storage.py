"""How the coordinator stores a secure-aggregation round: O(n) state per message and per poll.

The round is driven through the services by in-process SecAggClients (no Celery: phases are
closed by calling the close service, as the task would)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from federation import secagg, simulation
from federation.models import ProtocolMessage, ProtocolRelay, RoundProtocol, TrainingRound
from federation.services import orchestration as orch
from federation.services.rounds import round_request, round_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_round(tmp_path):
    table = simulation.default_table()
    parts = simulation.partition(table, 4, tmp_path)
    fed = simulation.setup_federation(
        partitions=parts, schema=simulation.schema_for(table, parts[0]), epsilon=8.0, rounds=1, prefix="st"
    )
    agents, keys = {}, {}
    for i, dataset in enumerate(sorted(fed.datasets, key=lambda d: d.organisation.slug)):
        user = get_user_model().objects.get(username=f"st-agent{i + 1}")
        key = Ed25519PrivateKey.generate()
        orch.agent_enrol(user=user, public_key_hex=key.public_key().public_bytes_raw().hex())
        agents[dataset.organisation.slug], keys[dataset.organisation.slug] = user, key
    round = round_request(actor=None, plan=fed.plan, system=True)
    with transaction.atomic():
        round = round_start(round_id=round.pk)
    assert round.status == TrainingRound.Status.RUNNING and round.phase == orch.ADVERTISE
    return round, agents, keys


def _task(user, phase):
    (task,) = orch.agent_tasks(user=user)
    assert task["phase"] == phase
    return task


def _submit(user, round, phase, body):
    return orch.agent_submit(user=user, round_id=round.pk, phase=phase, body=body)


def _refused_code(user, round, phase, body) -> str:
    with pytest.raises(orch.ProtocolRejected) as info:
        _submit(user, round, phase, body)
    return info.value.details["secagg_code"]


def _clients(agents, keys) -> dict:
    """An in-process SecAggClient per partner, configured from the round's first task."""
    slugs = sorted(agents)
    payload = _task(agents[slugs[0]], orch.ADVERTISE)["payload"]
    cfg = payload["config"]
    config = secagg.RoundConfig(cfg["round_id"], tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])
    identity = {p: bytes.fromhex(k) for p, k in payload["identity_keys"].items()}
    return {s: secagg.SecAggClient(config, party=s, signing_key=keys[s], identity_keys=identity) for s in slugs}


def _close(round, phase):
    with transaction.atomic():
        return orch.round_close_phase(round_id=round.pk, phase=phase)


def test_contributions_and_relays_live_one_row_per_party_and_the_state_stays_linear(running_round):
    round, agents, keys = running_round
    slugs = sorted(agents)
    clients = _clients(agents, keys)

    for s in slugs:
        _submit(agents[s], round, orch.ADVERTISE, clients[s].advertise_keys())
    assert _close(round, orch.ADVERTISE) == f"opened {orch.SHARE}"
    assert list(ProtocolRelay.objects.filter(round=round).values_list("phase", "party")) == [(orch.SHARE, "*")]

    shares = {}
    for s in slugs:
        key_list = base64.b64decode(_task(agents[s], orch.SHARE)["payload"]["relay"])
        shares[s] = clients[s].share_keys(key_list)
        assert _submit(agents[s], round, orch.SHARE, shares[s]) == {"accepted": True}
        # a repeated POST (e.g. a lost answer) is still recognised as a replay
        assert _refused_code(agents[s], round, orch.SHARE, shares[s]) == "replay"
    state = RoundProtocol.objects.get(round=round).state
    assert state["detached"] and "cts" not in state  # the sealed shares are not in the state
    rows = {m.party: m.data for m in ProtocolMessage.objects.filter(round=round, phase=orch.SHARE)}
    assert sorted(rows) == slugs and all(sorted(d) == sorted(set(slugs) - {p}) for p, d in rows.items())

    assert _close(round, orch.SHARE) == f"opened {orch.MASKED}"
    assert _close(round, orch.SHARE) == "already closed"  # a second delivery changes nothing
    assert not ProtocolMessage.objects.filter(round=round).exists()  # consumed into the relays
    relays = dict(ProtocolRelay.objects.filter(round=round, phase=orch.MASKED).values_list("party", "body"))
    assert sorted(relays) == slugs

    d = clients[slugs[0]].config.vector_length
    rng = np.random.default_rng(3)
    inputs = {s: rng.integers(0, 2**32, d, dtype=np.uint32) for s in slugs}
    for s in slugs:
        relay = _task(agents[s], orch.MASKED)["payload"]["relay"]
        assert relay == relays[s]  # its own relay, read alone
        body = clients[s].masked_input(base64.b64decode(relay), inputs[s])
        _submit(agents[s], round, orch.MASKED, body)
        assert _refused_code(agents[s], round, orch.MASKED, body) == "replay"
    with CaptureQueriesContext(connection) as queries:
        assert _close(round, orch.MASKED) == f"opened {orch.UNMASK}"
    # Closing MaskedInput changes no word of the running sum: its 4d bytes are not written again.
    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "\"running_sum\" = " in q["sql"]]

    for s in slugs:
        request = base64.b64decode(_task(agents[s], orch.UNMASK)["payload"]["relay"])
        body = clients[s].unmask(request)
        _submit(agents[s], round, orch.UNMASK, body)
        assert _refused_code(agents[s], round, orch.UNMASK, body) == "replay"
    assert ProtocolMessage.objects.filter(round=round, phase=orch.UNMASK).count() == len(slugs)
    with CaptureQueriesContext(connection) as queries:
        assert _close(round, orch.UNMASK) == "aggregating"
    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "\"running_sum\" = " in q["sql"]]
    assert not ProtocolRelay.objects.filter(round=round).exists()

    # What the aggregation unmasks is the exact sum of the inputs: check it through the
    # same restore the task does, then let the task run.
    protocol = RoundProtocol.objects.get(round=round)
    server = orch._server(protocol)
    orch._restore_contributions(round, server)
    expected = np.zeros(d, np.uint32)
    for v in inputs.values():
        expected += v
    np.testing.assert_array_equal(server.finalize().vector, expected)
    assert orch.round_aggregate(round_id=round.pk) in ("evaluating", "completed")
    assert not ProtocolMessage.objects.filter(round=round).exists()  # the unmask responses are used up
    assert orch.round_aggregate(round_id=round.pk) == "not aggregating"


def test_a_refused_message_stores_nothing(running_round):
    round, agents, keys = running_round
    slug = sorted(agents)[0]
    code = _refused_code(agents[slug], round, orch.ADVERTISE, json.dumps({"type": "advertise_keys"}).encode())
    assert code in {"malformed", "wrong_round"}
    assert not ProtocolMessage.objects.filter(round=round).exists()
    assert RoundProtocol.objects.get(round=round).pending == sorted(agents)


def test_an_agent_cannot_speak_for_another_partner(running_round):
    """Messages after AdvertiseKeys carry no signature of their own: the coordinator binds
    each one to the organisation whose agent token posted it. A partner posting a message
    that names another partner as sender is refused, and nothing is stored for either."""
    round, agents, keys = running_round
    slugs = sorted(agents)
    clients = _clients(agents, keys)
    victim, thief = slugs[0], slugs[1]
    before = RoundProtocol.objects.get(round=round).state
    advertised = {s: clients[s].advertise_keys() for s in slugs}
    assert _refused_code(agents[thief], round, orch.ADVERTISE, advertised[victim]) == "wrong_sender"
    assert RoundProtocol.objects.get(round=round).state == before
    for s in slugs:
        _submit(agents[s], round, orch.ADVERTISE, advertised[s])
    _close(round, orch.ADVERTISE)
    key_list = base64.b64decode(_task(agents[victim], orch.SHARE)["payload"]["relay"])
    share_keys = clients[victim].share_keys(key_list)
    assert _refused_code(agents[thief], round, orch.SHARE, share_keys) == "wrong_sender"
    assert not ProtocolMessage.objects.filter(round=round).exists()
    _submit(agents[victim], round, orch.SHARE, share_keys)  # the same bytes from their owner: accepted
    assert list(ProtocolMessage.objects.filter(round=round).values_list("party", flat=True)) == [victim]
