"""How the coordinator stores a secure-aggregation round: O(n) state per message and per poll.

The round is driven through the services by in-process SecAggClients (no Celery: phases are
closed by calling the close service, as the task would)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from federation import secagg
from federation.models import ProtocolMessage, ProtocolRelay, RoundProtocol
from federation.services.agent_rounds import agent_submit, agent_tasks
from federation.services.protocol import (
    ADVERTISE,
    MASKED,
    SHARE,
    UNMASK,
    ProtocolRejected,
    contributions_restore,
    protocol_server,
)
from federation.services.rounds import round_aggregate, round_close_phase

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_round(secagg_round):
    made = secagg_round(4, "st")  # tests/federation/conftest.py
    return made.round, made.agents, made.keys


def _task(user, phase):
    (task,) = agent_tasks(user=user)
    assert task["phase"] == phase
    return task


def _submit(user, round, phase, body):
    return agent_submit(user=user, round_id=round.pk, phase=phase, body=body)


def _refused_code(user, round, phase, body) -> str:
    with pytest.raises(ProtocolRejected) as info:
        _submit(user, round, phase, body)
    return info.value.details["secagg_code"]


def _clients(agents, keys) -> dict:
    """An in-process SecAggClient per partner, configured from the round's first task."""
    slugs = sorted(agents)
    payload = _task(agents[slugs[0]], ADVERTISE)["payload"]
    cfg = payload["config"]
    config = secagg.RoundConfig(cfg["round_id"], tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])
    identity = {p: bytes.fromhex(k) for p, k in payload["identity_keys"].items()}
    return {s: secagg.SecAggClient(config, party=s, signing_key=keys[s], identity_keys=identity) for s in slugs}


def _close(round, phase):
    with transaction.atomic():
        return round_close_phase(round_id=round.pk, phase=phase)


def test_contributions_and_relays_live_one_row_per_party_and_the_state_stays_linear(running_round):
    round, agents, keys = running_round
    slugs = sorted(agents)
    clients = _clients(agents, keys)

    for s in slugs:
        _submit(agents[s], round, ADVERTISE, clients[s].advertise_keys())
    assert _close(round, ADVERTISE) == f"opened {SHARE}"
    assert list(ProtocolRelay.objects.filter(round=round).values_list("phase", "party")) == [(SHARE, "*")]

    shares = {}
    for s in slugs:
        key_list = base64.b64decode(_task(agents[s], SHARE)["payload"]["relay"])
        shares[s] = clients[s].share_keys(key_list)
        assert _submit(agents[s], round, SHARE, shares[s]) == {"accepted": True}
        # a repeated POST (e.g. a lost answer) is still recognised as a replay
        assert _refused_code(agents[s], round, SHARE, shares[s]) == "replay"
    state = RoundProtocol.objects.get(round=round).state
    assert state["detached"] and "cts" not in state  # the sealed shares are not in the state
    rows = {m.party: m.data for m in ProtocolMessage.objects.filter(round=round, phase=SHARE)}
    assert sorted(rows) == slugs and all(sorted(d) == sorted(set(slugs) - {p}) for p, d in rows.items())

    assert _close(round, SHARE) == f"opened {MASKED}"
    assert _close(round, SHARE) == "already closed"  # a second delivery changes nothing
    assert not ProtocolMessage.objects.filter(round=round).exists()  # consumed into the relays
    relays = dict(ProtocolRelay.objects.filter(round=round, phase=MASKED).values_list("party", "body"))
    assert sorted(relays) == slugs

    d = clients[slugs[0]].config.vector_length
    rng = np.random.default_rng(3)
    inputs = {s: rng.integers(0, 2**32, d, dtype=np.uint32) for s in slugs}
    for s in slugs:
        relay = _task(agents[s], MASKED)["payload"]["relay"]
        assert relay == relays[s]  # its own relay, read alone
        body = clients[s].masked_input(base64.b64decode(relay), inputs[s])
        _submit(agents[s], round, MASKED, body)
        assert _refused_code(agents[s], round, MASKED, body) == "replay"
    with CaptureQueriesContext(connection) as queries:
        assert _close(round, MASKED) == f"opened {UNMASK}"
    # Closing MaskedInput changes no word of the running sum: its 4d bytes are not written again.
    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "\"running_sum\" = " in q["sql"]]

    for s in slugs:
        request = base64.b64decode(_task(agents[s], UNMASK)["payload"]["relay"])
        body = clients[s].unmask(request)
        _submit(agents[s], round, UNMASK, body)
        assert _refused_code(agents[s], round, UNMASK, body) == "replay"
    assert ProtocolMessage.objects.filter(round=round, phase=UNMASK).count() == len(slugs)
    with CaptureQueriesContext(connection) as queries:
        assert _close(round, UNMASK) == "aggregating"
    assert not [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "\"running_sum\" = " in q["sql"]]
    assert not ProtocolRelay.objects.filter(round=round).exists()

    # What the aggregation unmasks is the exact sum of the inputs: check it through the
    # same restore the task does, then let the task run.
    protocol = RoundProtocol.objects.get(round=round)
    server = protocol_server(protocol)
    contributions_restore(round, server)
    expected = np.zeros(d, np.uint32)
    for v in inputs.values():
        expected += v
    np.testing.assert_array_equal(server.finalize().vector, expected)
    assert round_aggregate(round_id=round.pk) in ("evaluating", "completed")
    assert not ProtocolMessage.objects.filter(round=round).exists()  # the unmask responses are used up
    assert round_aggregate(round_id=round.pk) == "not aggregating"


def test_a_refused_message_stores_nothing(running_round):
    round, agents, keys = running_round
    slug = sorted(agents)[0]
    code = _refused_code(agents[slug], round, ADVERTISE, json.dumps({"type": "advertise_keys"}).encode())
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
    assert _refused_code(agents[thief], round, ADVERTISE, advertised[victim]) == "wrong_sender"
    assert RoundProtocol.objects.get(round=round).state == before
    for s in slugs:
        _submit(agents[s], round, ADVERTISE, advertised[s])
    _close(round, ADVERTISE)
    key_list = base64.b64decode(_task(agents[victim], SHARE)["payload"]["relay"])
    share_keys = clients[victim].share_keys(key_list)
    assert _refused_code(agents[thief], round, SHARE, share_keys) == "wrong_sender"
    assert not ProtocolMessage.objects.filter(round=round).exists()
    _submit(agents[victim], round, SHARE, share_keys)  # the same bytes from their owner: accepted
    assert list(ProtocolMessage.objects.filter(round=round).values_list("party", flat=True)) == [victim]
