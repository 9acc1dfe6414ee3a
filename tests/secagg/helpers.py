"""A round driven step by step, so a test can inject a bad message at any point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from federation.secagg import RoundConfig, SecAggClient, SecAggError, SecAggServer, default_threshold
from federation.secagg.simulation import make_identities


def roster_of(n: int) -> tuple[str, ...]:
    # Not zero-padded, so sorted order ("org-10" < "org-2") differs from creation order.
    return tuple(f"org-{i}" for i in range(n))


def modular_sum(vectors) -> np.ndarray:
    vectors = list(vectors)
    acc = np.zeros_like(vectors[0], dtype=np.uint32)
    for v in vectors:
        acc += v
    return acc


class Harness:
    def __init__(
        self,
        n: int = 5,
        *,
        t: int | None = None,
        d: int = 16,
        round_id: str = "round-1",
        seed: int = 0,
        roster: tuple[str, ...] | None = None,
    ):
        self.roster = tuple(sorted(roster or roster_of(n)))
        n = len(self.roster)
        self.config = RoundConfig(round_id, self.roster, t or default_threshold(n), d)
        self.private, self.public = make_identities(self.roster)
        self.server = SecAggServer(self.config, identity_keys=self.public)
        self.clients = {p: self.new_client(p) for p in self.roster}
        rng = np.random.default_rng(seed)
        self.inputs = {p: rng.integers(0, 2**32, d, dtype=np.uint32) for p in self.roster}
        self.sent: dict[str, dict[str, bytes]] = {}  # phase -> party -> body
        self.key_list = self.relays = self.request = None

    def new_client(self, party: str, config: RoundConfig | None = None) -> SecAggClient:
        return SecAggClient(config or self.config, party=party, signing_key=self.private[party], identity_keys=self.public)

    def _send(self, phase, parties, make, receive):
        parties = self.roster if parties is None else parties
        out = self.sent.setdefault(phase, {})
        for p in parties:
            out[p] = make(p)
            receive(out[p])
        return out

    def advertise(self, parties=None):
        return self._send("advertise", parties, lambda p: self.clients[p].advertise_keys(), self.server.receive_advertise_keys)

    def close_advertise(self):
        self.key_list = self.server.close_advertise_keys()
        return self.key_list

    def share(self, parties=None):
        parties = sorted(self.sent["advertise"]) if parties is None else parties
        return self._send("share", parties, lambda p: self.clients[p].share_keys(self.key_list), self.server.receive_share_keys)

    def close_share(self):
        self.relays = self.server.close_share_keys()
        return self.relays

    def mask(self, parties=None):
        parties = sorted(self.relays) if parties is None else parties
        return self._send(
            "mask",
            parties,
            lambda p: self.clients[p].masked_input(self.relays[p], self.inputs[p]),
            self.server.receive_masked_input,
        )

    def close_mask(self):
        self.request = self.server.close_masked_input()
        return self.request

    def unmask(self, parties=None):
        parties = json.loads(self.request)["survivors"] if parties is None else parties
        return self._send("unmask", parties, lambda p: self.clients[p].unmask(self.request), self.server.receive_unmask_response)

    def up_to(self, phase: str) -> Harness:
        """Run every party through the phases before ``phase`` ("share", "mask", "unmask" or "final").

        "share" means the key list is out and ShareKeys is open, and so on; "final" leaves
        every unmask response received and ``finalize`` to call.
        """
        steps = [
            ("share", self.advertise, self.close_advertise),
            ("mask", self.share, self.close_share),
            ("unmask", self.mask, self.close_mask),
        ]
        for name, send, close in steps:
            send()
            close()
            if name == phase:
                return self
        self.unmask()
        return self


def snapshot(server: SecAggServer) -> tuple[str, bytes | None]:
    return json.dumps(server.to_dict(), sort_keys=True), server.running_sum_bytes()


def assert_rejected(server: SecAggServer, receive, body: bytes, error: type[SecAggError], code: str) -> SecAggError:
    """The server refuses ``body`` with ``error``/``code`` and is exactly as before."""
    before = snapshot(server)
    with pytest.raises(error) as info:
        receive(body)
    assert info.value.code == code
    assert snapshot(server) == before
    return info.value


def tamper_json(body: bytes, **changes) -> bytes:
    msg = json.loads(body)
    msg.update(changes)
    return json.dumps(msg).encode()
