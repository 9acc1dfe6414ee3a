"""The sum is exact, with and without dropouts, and nothing comes out below the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from federation.secagg import RoundConfig, TooFewSurvivors, default_threshold, max_body_bytes
from federation.secagg.simulation import run_round

from .helpers import Harness, modular_sum, roster_of


def _inputs(roster, d, seed=1):
    rng = np.random.default_rng(seed)
    return {p: rng.integers(0, 2**32, d, dtype=np.uint32) for p in roster}


def _config(n, d=8, t=None):
    return RoundConfig("round-7", roster_of(n), t or default_threshold(n), d)


@pytest.mark.parametrize("n", [3, 4, 5, 10, 17, 50])
def test_sum_is_exact_without_dropouts(n):
    cfg = _config(n, d=13)
    xs = _inputs(cfg.roster, 13, seed=n)
    result = run_round(cfg, xs)
    assert result.contributors == cfg.roster
    assert result.dropouts == ()
    assert result.vector.dtype == np.uint32
    np.testing.assert_array_equal(result.vector, modular_sum(xs.values()))


def test_sum_wraps_modulo_2_32():
    cfg = _config(3, d=4)
    xs = {p: np.full(4, 2**32 - 1, dtype=np.uint32) for p in cfg.roster}
    result = run_round(cfg, xs)
    np.testing.assert_array_equal(result.vector, np.full(4, (3 * (2**32 - 1)) % 2**32, dtype=np.uint32))


def test_round_survives_serialising_server_and_clients_between_every_message():
    cfg = _config(6, d=10)
    xs = _inputs(cfg.roster, 10)
    r = cfg.roster
    result = run_round(cfg, xs, persist=True, drop_after_advertise=[r[0]], drop_after_share_keys=[r[1]])
    assert result.contributors == r[2:]
    np.testing.assert_array_equal(result.vector, modular_sum(xs[p] for p in r[2:]))


PHASES = ["absent", "drop_after_advertise", "drop_after_share_keys", "drop_during_unmask"]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("n,t,k", [(3, 2, 1), (7, 4, 1), (7, 4, 3), (10, 6, 4)])
def test_sum_is_exact_with_dropouts_at_each_phase(phase, n, t, k):
    cfg = _config(n, d=9, t=t)
    xs = _inputs(cfg.roster, 9, seed=k)
    dropped = cfg.roster[1 : 1 + k]
    result = run_round(cfg, xs, **{phase: dropped})
    # Parties gone before MaskedInput are not in the sum; dropping during unmasking does not
    # remove an input that already arrived.
    in_sum = cfg.roster if phase == "drop_during_unmask" else tuple(p for p in cfg.roster if p not in dropped)
    assert result.contributors == in_sum
    assert result.dropouts == (dropped if phase == "drop_after_share_keys" else ())
    np.testing.assert_array_equal(result.vector, modular_sum(xs[p] for p in in_sum))


def test_sum_is_exact_with_dropouts_spread_over_every_phase():
    cfg = _config(10, d=11, t=6)  # n - t = 4 dropouts in total, one per point
    r = cfg.roster
    xs = _inputs(r, 11, seed=3)
    result = run_round(
        cfg, xs, absent=[r[9]], drop_after_advertise=[r[0]], drop_after_share_keys=[r[4]], drop_during_unmask=[r[7]]
    )
    in_sum = tuple(p for p in r if p not in (r[9], r[0], r[4]))
    assert result.contributors == in_sum
    assert result.dropouts == (r[4],)
    np.testing.assert_array_equal(result.vector, modular_sum(xs[p] for p in in_sum))


def test_fifty_parties_with_the_most_dropouts_after_share_keys():
    cfg = _config(50, d=6)
    xs = _inputs(cfg.roster, 6, seed=50)
    dropped = cfg.roster[::2][: 50 - cfg.threshold]
    result = run_round(cfg, xs, drop_after_share_keys=dropped)
    in_sum = tuple(p for p in cfg.roster if p not in dropped)
    assert len(in_sum) == cfg.threshold
    np.testing.assert_array_equal(result.vector, modular_sum(xs[p] for p in in_sum))


@pytest.mark.parametrize("phase", PHASES)
def test_fewer_than_threshold_survivors_aborts_with_no_sum(phase):
    h = Harness(5, t=3, d=8)
    gone = set(h.roster[:3])  # 2 remain < t = 3
    stay = [p for p in h.roster if p not in gone]
    with pytest.raises(TooFewSurvivors) as info:
        if phase == "absent":
            h.advertise(stay)
            h.close_advertise()
        h.advertise()
        h.close_advertise()
        if phase == "drop_after_advertise":
            h.share(stay)
            h.close_share()
        h.share()
        h.close_share()
        if phase == "drop_after_share_keys":
            h.mask(stay)
            h.close_mask()
        h.mask()
        h.close_mask()
        h.unmask(stay)
        h.server.finalize()
    assert info.value.code == "too_few_survivors"
    assert info.value.survivors == 2 and info.value.threshold == 3
    assert h.server.phase == "aborted"
    assert h.server.running_sum is None and h.server.running_sum_bytes() is None


def test_finalize_uses_exactly_threshold_shares_and_ignores_late_extra_ones():
    h = Harness(7, t=4, d=8).up_to("unmask")
    assert not h.server.can_finalize
    h.unmask(h.roster[:3])
    assert not h.server.can_finalize and h.server.responders == list(h.roster[:3])
    h.unmask(h.roster[3:4])
    assert h.server.can_finalize
    assert h.server.survivors == list(h.roster)
    assert h.server.pending() == list(h.roster[4:])
    result = h.server.finalize()
    np.testing.assert_array_equal(result.vector, modular_sum(h.inputs.values()))


def test_pending_names_who_the_phase_waits_for():
    h = Harness(4, t=3)
    assert h.server.pending() == list(h.roster)
    h.advertise(h.roster[:3])
    assert h.server.pending() == [h.roster[3]]
    h.close_advertise()
    assert h.server.pending() == list(h.roster[:3])  # only U1 is expected to share keys


def test_a_single_receive_entry_point_routes_every_client_message():
    h = Harness(4, d=8)
    srv, clients = h.server, h.clients
    assert {srv.receive(c.advertise_keys()) for c in clients.values()} == {"advertise_keys"}
    key_list = srv.close_advertise_keys()
    assert {srv.receive(c.share_keys(key_list)) for c in clients.values()} == {"share_keys"}
    relays = srv.close_share_keys()
    assert {srv.receive(c.masked_input(relays[p], h.inputs[p])) for p, c in clients.items()} == {"masked_input"}
    request = srv.close_masked_input()
    assert {srv.receive(c.unmask(request)) for c in clients.values()} == {"unmask_response"}
    np.testing.assert_array_equal(srv.finalize().vector, modular_sum(h.inputs.values()))


def test_honest_messages_fit_the_size_caps_with_the_longest_ids_and_fifty_parties():
    roster = tuple(f"{i:02d}" + "o" * 62 for i in range(50))  # 64-character organisation slugs
    h = Harness(d=4, roster=roster, round_id="r" * 128)
    h.up_to("final")
    assert h.server.finalize().contributors == h.roster
    sizes = {
        "advertise_keys": h.sent["advertise"].values(),
        "key_list": [h.key_list],
        "share_keys": h.sent["share"].values(),
        "share_relay": h.relays.values(),
        "masked_input": h.sent["mask"].values(),
        "unmask_request": [h.request],
        "unmask_response": h.sent["unmask"].values(),
    }
    for kind, bodies in sizes.items():
        cap = max_body_bytes(h.config, kind)
        assert max(len(b) for b in bodies) <= cap, kind
