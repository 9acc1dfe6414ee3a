"""Contributions kept apart from the server state (how the coordinator stores a round).

The coordinator saves the server after every message with ``to_dict(contributions=False)``
(O(n)) and keeps each accepted ShareKeys / unmask response as its own record; it hands them
back with ``restore_contributions`` only to close ShareKeys or to finalize. That must not
change what is accepted, what is refused (and with which code), or what comes out."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from federation.secagg import SHARE_KEYS, UNMASK_RESPONSE, Contribution, SecAggError, SecAggServer

from .helpers import Harness, modular_sum, tamper_json
from .test_validation import _mutations


class Store:
    """The coordinator's side in miniature: O(n) state + one record per contribution."""

    def __init__(self, server: SecAggServer):
        self.state = server.to_dict(contributions=False)
        self.running_sum = server.running_sum_bytes()
        self.rows: dict[tuple[str, str], dict] = {}

    def load(self) -> SecAggServer:
        return SecAggServer.from_dict(json.loads(json.dumps(self.state)), running_sum=self.running_sum)

    def save(self, server: SecAggServer) -> None:
        self.state = server.to_dict(contributions=False)
        self.running_sum = server.running_sum_bytes()

    def submit(self, receive_name: str, body: bytes) -> Contribution | None:
        server = self.load()
        contribution = getattr(server, receive_name)(body)
        if contribution is not None:
            key = (contribution.phase, contribution.sender)
            assert key not in self.rows
            self.rows[key] = json.loads(json.dumps(contribution.data))
        self.save(server)
        return contribution

    def restored(self) -> SecAggServer:
        server = self.load()
        server.restore_contributions({sender: data for (phase, sender), data in self.rows.items() if phase == server.phase})
        return server


RECEIVE = {
    "advertise": "receive_advertise_keys",
    "share": "receive_share_keys",
    "mask": "receive_masked_input",
    "unmask": "receive_unmask_response",
}


def _outcome(server: SecAggServer, receive_name: str, body: bytes) -> str:
    try:
        getattr(server, receive_name)(body)
    except SecAggError as exc:
        return exc.code
    return "accepted"


def _run_apart(h: Harness, dropouts: tuple[str, ...] = ()) -> tuple[Store, dict, bytes, np.ndarray]:
    """Replay ``h``'s bodies through a Store, reloading the server after every message."""
    store = Store(SecAggServer(h.config, identity_keys=h.public))
    for body in h.sent["advertise"].values():
        store.submit(RECEIVE["advertise"], body)
    server = store.load()
    assert server.close_advertise_keys() == h.key_list
    store.save(server)
    for body in h.sent["share"].values():
        c = store.submit(RECEIVE["share"], body)
        assert isinstance(c, Contribution) and c.phase == SHARE_KEYS
    assert store.state["detached"] and "cts" not in store.state
    server = store.restored()
    relays = server.close_share_keys()
    store.save(server)
    store.rows = {k: v for k, v in store.rows.items() if k[0] != SHARE_KEYS}  # consumed: in the relays now
    for body in h.sent["mask"].values():
        assert store.submit(RECEIVE["mask"], body) is None
    server = store.load()
    request = server.close_masked_input()
    store.save(server)
    for body in h.sent["unmask"].values():
        c = store.submit(RECEIVE["unmask"], body)
        assert c.phase == UNMASK_RESPONSE
    server = store.load()
    assert server.can_finalize and server.responders == sorted(h.sent["unmask"])
    result = store.restored().finalize()
    return store, relays, request, result.vector


def test_a_round_with_contributions_kept_apart_relays_and_sums_exactly_as_in_memory():
    h = Harness(6, t=4, d=64)
    h.up_to("mask")
    h.mask(h.roster[:5])  # org-5 drops out after sharing keys: its masking key is reconstructed
    h.close_mask()
    h.unmask()
    expected = h.server.finalize().vector
    _, relays, request, vector = _run_apart(h)
    assert relays == h.relays
    assert request == h.request
    np.testing.assert_array_equal(vector, expected)
    np.testing.assert_array_equal(vector, modular_sum(h.inputs[p] for p in h.roster[:5]))


def test_the_state_without_contributions_grows_linearly_with_the_parties():
    sizes = {}
    for n in (10, 40):
        h = Harness(n, d=4).up_to("share")
        h.share()
        attached, apart = h.server.to_dict(), h.server.to_dict(contributions=False)
        assert "cts" not in apart and "responses" not in apart
        sizes[n] = (len(json.dumps(attached)), len(json.dumps(apart)))
    # 4x the parties: the full state grows ~16x (n^2 sealed shares), the detached one ~4x.
    assert sizes[40][0] > 12 * sizes[10][0]
    assert sizes[40][1] < 5 * sizes[10][1]


def test_a_reloaded_detached_server_still_refuses_replays_and_second_messages_with_their_codes():
    h = Harness(5, t=3, d=8).up_to("share")
    store = Store(h.server)
    share = h.clients["org-1"].share_keys(h.key_list)
    store.submit(RECEIVE["share"], share)
    assert _outcome(store.load(), RECEIVE["share"], share) == "replay"  # what the agent relies on
    nonce = bytearray(base64.b64decode(json.loads(share)["nonce"]))
    nonce[0] ^= 1
    second = tamper_json(share, nonce=base64.b64encode(bytes(nonce)).decode())
    assert _outcome(store.load(), RECEIVE["share"], second) == "duplicate_sender"
    assert _outcome(store.load(), RECEIVE["mask"], b"FGSA") in {"malformed", "bad_length"}
    h.share([p for p in h.roster if p != "org-1"])
    h.server.receive_share_keys(share)
    h.close_share()
    store = Store(h.server)
    assert _outcome(store.load(), RECEIVE["share"], share) == "replay"  # also once the phase closed


@pytest.mark.parametrize("phase", ["share", "unmask"])
def test_a_detached_server_accepts_and_refuses_exactly_what_the_full_one_does(phase):
    """Genuine, mutated, replayed, forged and misaddressed messages: same outcome, same code."""
    rng = np.random.default_rng(7)
    h = Harness(5, t=3, d=8)
    last = h.roster[-1]
    if phase == "share":
        h.up_to("share")
        h.share(h.roster[:-1])
        genuine = h.clients[last].share_keys(h.key_list)
        others = h.sent["share"]
    else:
        h.up_to("unmask")
        h.unmask(h.roster[:-1])
        genuine = h.clients[last].unmask(h.request)
        others = h.sent["unmask"]
    receive = RECEIVE[phase]
    msg = json.loads(genuine)
    candidates = [genuine, *others.values(), tamper_json(genuine, sender="org-9"), tamper_json(genuine, round="round-2")]
    candidates += [tamper_json(genuine, sender=p) for p in h.roster[:-1]]  # another sender's name
    if phase == "share":
        shares = msg["shares"]
        candidates.append(json.dumps(dict(msg, shares=[dict(shares[0], to="org-9"), *shares[1:]])).encode())
        candidates.append(json.dumps(dict(msg, shares=[dict(shares[0], to=last), *shares[1:]])).encode())
    candidates += list(_mutations(genuine, rng, 200))
    state, acc = h.server.to_dict(), h.server.running_sum_bytes()
    detached_state = h.server.to_dict(contributions=False)
    codes = set()
    for body in candidates:
        full = SecAggServer.from_dict(state, running_sum=acc)
        apart = SecAggServer.from_dict(detached_state, running_sum=acc)
        outcome = _outcome(full, receive, body)
        assert _outcome(apart, receive, body) == outcome, body[:120]
        codes.add(outcome)
    assert {"accepted", "replay", "not_a_member", "malformed"} <= codes


def test_closing_or_finalizing_a_detached_server_needs_its_contributions_first():
    h = Harness(4, d=8).up_to("share")
    h.share()
    server = SecAggServer.from_dict(h.server.to_dict(contributions=False))
    assert server.detached
    with pytest.raises(ValueError, match="restore_contributions"):
        server.close_share_keys()  # never an abort for "no shares" nor an empty relay
    with pytest.raises(ValueError):
        server.to_dict()  # would save a state that silently lost the shares
    assert server.phase == SHARE_KEYS

    h.close_share()
    h.mask()
    h.close_mask()
    h.unmask()
    server = SecAggServer.from_dict(h.server.to_dict(contributions=False), running_sum=h.server.running_sum_bytes())
    assert server.can_finalize and server.responders == list(h.roster)  # known without the shares
    with pytest.raises(ValueError, match="restore_contributions"):
        server.finalize()


def test_restoring_refuses_contributions_that_do_not_match_the_accepted_senders():
    h = Harness(4, d=8).up_to("share")
    contributions = {c.sender: c.data for c in (h.server.receive_share_keys(h.clients[p].share_keys(h.key_list)) for p in h.roster)}
    detached = h.server.to_dict(contributions=False)

    def restore(cs):
        SecAggServer.from_dict(detached).restore_contributions(cs)

    with pytest.raises(ValueError):
        restore({p: c for p, c in contributions.items() if p != "org-0"})  # one lost
    with pytest.raises(ValueError):
        restore({**contributions, "org-9": contributions["org-0"]})  # one never accepted
    with pytest.raises(ValueError):
        restore({**contributions, "org-0": contributions["org-1"]})  # addressed to the wrong parties
    server = SecAggServer.from_dict(detached)
    server.restore_contributions(contributions)
    assert server.close_share_keys() == h.server.close_share_keys()
    with pytest.raises(ValueError):
        server.restore_contributions({})  # already holds them


def test_restoring_refuses_unmask_responses_that_are_not_field_elements():
    h = Harness(3, d=8).up_to("unmask")
    contributions = {c.sender: c.data for c in (h.server.receive_unmask_response(h.clients[p].unmask(h.request)) for p in h.roster)}
    state, acc = h.server.to_dict(contributions=False), h.server.running_sum_bytes()
    bad = json.loads(json.dumps(contributions))
    bad["org-0"]["b"]["org-1"] = "f" * 200
    with pytest.raises(ValueError):
        SecAggServer.from_dict(state, running_sum=acc).restore_contributions(bad)
    server = SecAggServer.from_dict(state, running_sum=acc)
    server.restore_contributions(contributions)
    np.testing.assert_array_equal(server.finalize().vector, modular_sum(h.inputs.values()))
