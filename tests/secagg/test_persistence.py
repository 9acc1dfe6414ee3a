"""Server state survives a trip through JSON + raw bytes between Celery tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from federation.secagg import BadLength, ReplayedMessage, SecAggServer

from .helpers import Harness, modular_sum


def _reload(server: SecAggServer) -> SecAggServer:
    return SecAggServer.from_bytes(server.to_bytes(), running_sum=server.running_sum_bytes())


def test_state_is_plain_json_and_the_running_sum_travels_as_raw_bytes():
    d = 50_000
    h = Harness(4, d=d).up_to("mask")
    h.mask(h.roster[:2])
    state = json.dumps(h.server.to_dict())  # JSON-able as is
    raw = h.server.running_sum_bytes()
    assert len(raw) == 4 * d
    assert len(state) < 10_000  # O(n^2) bookkeeping; the O(d) part is only in ``raw``
    h.server = _reload(h.server)
    h.mask(h.roster[2:])
    h.close_mask()
    h.unmask()
    np.testing.assert_array_equal(h.server.finalize().vector, modular_sum(h.inputs.values()))


def test_a_reloaded_server_still_refuses_replays():
    h = Harness(3, d=8).up_to("mask")
    sent = h.mask(h.roster[:1])
    reloaded = _reload(h.server)
    with pytest.raises(ReplayedMessage):
        reloaded.receive_masked_input(sent[h.roster[0]])


def test_restoring_needs_a_running_sum_of_the_round_length():
    h = Harness(3, d=8).up_to("mask")
    state = h.server.to_bytes()
    with pytest.raises(ValueError):
        SecAggServer.from_bytes(state)
    with pytest.raises(BadLength):
        SecAggServer.from_bytes(state, running_sum=bytes(4 * 7))
    restored = SecAggServer.from_bytes(state, running_sum=np.zeros(8, np.uint32))
    assert restored.pending() == list(h.roster)
