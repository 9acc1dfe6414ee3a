"""fedgov's accountant against dp-accounting's own accountants. No database."""

import json
import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from accounting import accountant as acc
from accounting import dp_events
from tests.accounting.dp_cases import PARAMETER_SETS, params, varied_events

DELTA = 1e-5

def library_epsilon(events, delta=DELTA):
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("q", "z", "K", "ez", "ec"), PARAMETER_SETS)
def test_epsilon_of_one_round_equals_dp_accounting_rdp(q, z, K, ez, ec):
    event = dp_events.dataset_round_event(params(q, z, K, ez, ec))
    ours = acc.epsilon_from_rdp(acc.rdp_vector(event), DELTA)
    theirs = library_epsilon([event])
    assert ours == pytest.approx(theirs, rel=1e-6)


@pytest.mark.parametrize(("q", "z", "K", "ez", "ec"), PARAMETER_SETS)
def test_epsilon_of_many_rounds_equals_dp_accounting_rdp(q, z, K, ez, ec):
    event = dp_events.dataset_round_event(params(q, z, K, ez, ec))
    rounds = 7
    ours = acc.compose_epsilon([event] * rounds, DELTA)
    theirs = library_epsilon([dpa.SelfComposedDpEvent(event, rounds)])
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_abadi_mnist_setting_gives_the_known_epsilon():
    # dp-accounting's RDP figure for the classic setting (a regression anchor, not a claim).
    event = dp_events.round_event(256 / 60000, 1.1, 14063)
    assert acc.epsilon_from_rdp(acc.rdp_vector(event), 1e-5) == pytest.approx(2.5967, abs=1e-3)


def test_cumulative_vector_equals_full_recomposition():
    events = varied_events()
    cum = acc.zero_rdp()
    for event in events:
        cum = acc.rdp_add(cum, acc.rdp_vector(event))
    theirs = RdpAccountant()
    for event in events:
        theirs.compose(event)
    np.testing.assert_allclose(cum, theirs.rdp, rtol=1e-12)
    assert acc.epsilon_from_rdp(cum, DELTA) == pytest.approx(theirs.get_epsilon(DELTA), rel=1e-6)
    assert acc.compose_epsilon(events, DELTA) == pytest.approx(theirs.get_epsilon(DELTA), rel=1e-6)


def test_subtracting_a_released_event_equals_recomposing_without_it():
    events = varied_events()
    cum = acc.compose_rdp(events)
    released = events.pop(3)
    cum = acc.rdp_subtract(cum, acc.rdp_vector(released))
    assert acc.epsilon_from_rdp(cum, DELTA) == pytest.approx(library_epsilon(events), rel=1e-6)
    assert (cum >= 0).all()


def test_subtracting_everything_never_goes_negative():
    events = [dp_events.round_event(0.03, 1.0 + 0.1 * i, 20 + i) for i in range(5)]
    cum = acc.compose_rdp(events)
    for event in reversed(events):
        cum = acc.rdp_subtract(cum, acc.rdp_vector(event))
    assert (cum >= 0).all()
    assert acc.epsilon_from_rdp(cum, DELTA) == pytest.approx(0.0, abs=1e-9)


def test_orders_dp_accounting_excludes_stay_excluded_after_a_release():
    # For q=0.2, z=1.5 dp-accounting's series does not converge at the smallest orders and
    # it reports +inf there ("excluding this order"). Releasing such an event cannot tell
    # what is left at those orders, so they stay excluded: never an underestimate.
    odd = dp_events.round_event(0.2, 1.5, 10)
    assert np.isinf(acc.rdp_vector(odd)).any()
    kept = dp_events.round_event(0.01, 1.0, 100)
    cum = acc.rdp_subtract(acc.compose_rdp([kept, odd]), acc.rdp_vector(odd))
    assert not np.isnan(cum).any()
    assert acc.epsilon_from_rdp(cum, DELTA) >= library_epsilon([kept]) * (1 - 1e-9)
    assert acc.epsilon_from_rdp(cum, DELTA) == pytest.approx(library_epsilon([kept]), rel=1e-3)


def test_rdp_vector_json_form_keeps_excluded_orders():
    vec = acc.rdp_vector(dp_events.round_event(0.2, 1.5, 10))
    data = acc.rdp_to_json(vec)
    assert None in data
    json.dumps(data, allow_nan=False)
    np.testing.assert_array_equal(acc.rdp_from_json(data), vec)
    with pytest.raises(ValueError):
        acc.rdp_from_json(data[:-1])
    with pytest.raises(ValueError):
        acc.rdp_from_json([-1.0] * len(data))


def test_rdp_vector_uses_the_library_default_orders_and_is_memoised_read_only():
    assert acc.ORDERS == tuple(float(o) for o in RdpAccountant().orders)
    a = acc.rdp_vector(dp_events.round_event(0.01, 1.0, 100))
    b = acc.rdp_vector(dp_events.round_event(0.01, 1.0, 100))  # built separately, same event
    assert a is b
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 0.0


def test_bad_delta_is_refused():
    vec = acc.rdp_vector(dp_events.round_event(0.01, 1.0, 10))
    for delta in (0.0, 1.0, -1e-5, float("nan")):
        with pytest.raises(ValueError):
            acc.epsilon_from_rdp(vec, delta)


def test_pld_path_equals_dp_accountings_pld_accountant():
    events = [dp_events.round_event(0.05, 1.0 + 0.2 * i, 20) for i in range(3)] + [dp_events.evaluation_event(10.0, 2)]
    ours = acc.compose_epsilon(events, DELTA, "pld")
    theirs = (
        PLDAccountant(value_discretization_interval=acc.PLD_VALUE_DISCRETIZATION_INTERVAL)
        .compose(dpa.ComposedDpEvent(events))
        .get_epsilon(DELTA)
    )
    assert ours == pytest.approx(theirs, rel=1e-6)
    # PLD is the tighter accountant; RDP an upper bound on the same events.
    assert ours <= acc.compose_epsilon(events, DELTA, "rdp") * (1 + 1e-9)


def test_pld_prefix_cache_extends_and_survives_a_release_in_the_middle():
    events = [dp_events.round_event(0.05, 1.0 + 0.1 * i, 10) for i in range(4)]
    acc._pld_cache.clear()
    eps_all = acc.pld_epsilon(events, DELTA)
    # Extending by one event reuses the cached prefix and still matches a fresh composition.
    extra = dp_events.round_event(0.05, 2.0, 10)
    extended = acc.pld_epsilon(events + [extra], DELTA)
    fresh = PLDAccountant().compose(dpa.ComposedDpEvent(events + [extra])).get_epsilon(DELTA)
    assert extended == pytest.approx(fresh, rel=1e-6)
    assert extended > eps_all
    without = events[:1] + events[2:]
    fresh = PLDAccountant().compose(dpa.ComposedDpEvent(without)).get_epsilon(DELTA)
    assert acc.pld_epsilon(without, DELTA) == pytest.approx(fresh, rel=1e-6)


def test_unknown_accountant_is_refused():
    with pytest.raises(ValueError, match="accountant"):
        acc.compose_epsilon([dp_events.round_event(0.01, 1.0, 10)], DELTA, "moments")


def test_no_events_spend_nothing():
    assert acc.compose_epsilon([], DELTA) == 0.0
    assert acc.compose_epsilon([], DELTA, "pld") == 0.0
    assert math.isfinite(acc.epsilon_from_rdp(acc.zero_rdp(), DELTA))


@pytest.fixture
def curve_store(tmp_path):
    """A curve store in tmp_path and an empty in-process memo; both put back afterwards."""
    previous = acc._curve_store
    acc.use_curve_store(tmp_path)
    acc._rdp_vector_cached.cache_clear()
    yield tmp_path
    acc.use_curve_store(previous)
    acc._rdp_vector_cached.cache_clear()


def direct_rdp(event):
    direct = RdpAccountant(orders=list(acc.ORDERS))
    direct.compose(event)
    return direct.rdp


def test_a_curve_computed_by_one_process_is_read_back_from_the_store_by_another(curve_store, monkeypatch):
    event = dp_events.dataset_round_event({"q": 0.037, "z": 1.7, "K": 9, "eval_noise_multiplier": 8.0, "eval_count": 2})
    expected = direct_rdp(event)
    first = acc.rdp_vector(event)
    assert len(list(curve_store.glob("*.json"))) == 1
    np.testing.assert_array_equal(first, expected)
    # Another process: an empty in-process memo, and dp-accounting must not be asked again.
    acc._rdp_vector_cached.cache_clear()
    monkeypatch.setattr(acc.rdp_privacy_accountant, "RdpAccountant", None)
    np.testing.assert_array_equal(acc.rdp_vector(event), expected)


@pytest.mark.parametrize("damage", ["truncated", "other_key", "negative"])
def test_a_damaged_or_foreign_stored_curve_is_recomputed_not_trusted(curve_store, damage):
    event = dp_events.dataset_round_event({"q": 0.041, "z": 1.3, "K": 5})
    expected = direct_rdp(event)
    acc.rdp_vector(event)
    (path,) = curve_store.glob("*.json")
    data = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[:50])
    elif damage == "other_key":
        data["key"] = dp_events.event_key(dp_events.dataset_round_event({"q": 0.5, "z": 1.3, "K": 5}))
        path.write_text(json.dumps(data))
    else:
        data["rdp"] = [0.0] + [-1.0] * (len(data["rdp"]) - 1)  # would understate epsilon
        path.write_text(json.dumps(data))
    acc._rdp_vector_cached.cache_clear()
    np.testing.assert_array_equal(acc.rdp_vector(event), expected)
