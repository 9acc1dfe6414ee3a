"""fedgov's accountant against dp-accounting's own accountants. No database."""

import importlib
import json
import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from accounting import accountant as acc
from accounting import dp_events

DELTA = 1e-5

# (q, z, K, eval_noise_multiplier, eval_count); the first is Abadi et al.'s MNIST setting:
# 60 epochs of batch 256 over 60,000 records.
PARAMETER_SETS = [
    (256 / 60000, 1.1, 14063, None, 1),
    (0.01, 1.0, 100, None, 1),
    (0.05, 0.8, 50, 20.0, 2),
    (1.0, 5.0, 3, None, 1),
    (0.001, 2.0, 1000, 50.0, 1),
    (0.2, 1.5, 10, None, 1),
    (0.02, 0.6, 200, 10.0, 3),
]


def library_epsilon(events, delta=DELTA):
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def params(q, z, K, ez, ec):
    return {"q": q, "z": z, "K": K, "eval_noise_multiplier": ez, "eval_count": ec}


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


def test_round_event_has_the_design_shape():
    event = dp_events.round_event(0.01, 1.2, 30)
    assert event == dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.2)), 30)
    assert dp_events.evaluation_event(3.0, 2) == dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(3.0), 2)
    both = dp_events.dataset_round_event({"q": 0.01, "z": 1.2, "K": 30, "eval_noise_multiplier": 3.0})
    assert both == dpa.ComposedDpEvent([event, dp_events.evaluation_event(3.0, 1)])
    alone = dp_events.dataset_round_event({"q": 0.01, "z": 1.2, "K": 30, "eval_noise_multiplier": None})
    assert alone == event


def varied_events():
    return [dp_events.dataset_round_event(params(*p)) for p in PARAMETER_SETS[1:]] + [
        dp_events.round_event(0.03, 1.0 + 0.1 * i, 20 + i) for i in range(5)
    ]


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


@pytest.mark.parametrize("event", varied_events())
def test_json_round_trip_gives_an_equal_event(event):
    data = dp_events.event_to_json(event)
    text = json.dumps(data)
    assert dp_events.event_from_json(json.loads(text)) == event
    assert dp_events.event_from_json(text) == event
    assert dp_events.canonical_json(dp_events.event_from_json(text)) == dp_events.canonical_json(event)


def test_canonical_json_is_sorted_compact_and_stable():
    a = dp_events.round_event(256 / 60000, 1.1, 14063)
    b = dp_events.round_event(256 / 60000, 1.1, 14063)
    assert dp_events.canonical_json(a) == dp_events.canonical_json(b)
    text = dp_events.canonical_json(a)
    assert " " not in text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    # Key order in the input does not matter.
    shuffled = dict(reversed(list(dp_events.event_to_json(a).items())))
    assert dp_events.event_key(shuffled) == text
    # Integral floats written by other tools are normalised.
    loose = json.loads(text)
    loose["count"] = 14063.0
    assert dp_events.event_key(loose) == text


def test_json_form_is_dp_accountings_named_tuple_form():
    event = dp_events.round_event(0.01, 1.2, 30)
    assert dp_events.event_to_json(event)["module_name"] == "dp_accounting.dp_event"
    # dp-accounting can read what we write (after our checks) ...
    nt = event.to_named_tuple()
    assert nt.class_name == dp_events.event_to_json(event)["class_name"]


def good_record():
    return dp_events.event_to_json(dp_events.round_event(0.01, 1.2, 30))


def mutate(path, value):
    record = good_record()
    target = record
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return record


BAD_RECORDS = {
    "module os": mutate(["module_name"], "os"),
    "nested module": mutate(["event", "event", "module_name"], "subprocess"),
    "module prefix trick": mutate(["module_name"], "dp_accounting.dp_event.evil"),
    "non-private class": mutate(["class_name"], "NonPrivateDpEvent"),
    "unsupported class": mutate(["event", "class_name"], "UnsupportedDpEvent"),
    "laplace not allow-listed": mutate(["event", "event", "class_name"], "LaplaceDpEvent"),
    "dunder class": mutate(["class_name"], "__class__"),
    "class not a string": mutate(["class_name"], ["SelfComposedDpEvent"]),
    "missing class": mutate(["class_name"], KeyError),
    "missing field": mutate(["count"], KeyError),
    "extra field": mutate(["extra"], 1),
    "count is bool": mutate(["count"], True),
    "count is string": mutate(["count"], "30"),
    "count fractional": mutate(["count"], 2.5),
    "count zero": mutate(["count"], 0),
    "count negative": mutate(["count"], -1),
    "count huge": mutate(["count"], 10**12),
    "q zero": mutate(["event", "sampling_probability"], 0.0),
    "q above one": mutate(["event", "sampling_probability"], 1.5),
    "q nan": mutate(["event", "sampling_probability"], float("nan")),
    "z zero": mutate(["event", "event", "noise_multiplier"], 0),
    "z negative": mutate(["event", "event", "noise_multiplier"], -1.0),
    "z infinite": mutate(["event", "event", "noise_multiplier"], float("inf")),
    "z string": mutate(["event", "event", "noise_multiplier"], "1.2"),
    "z null": mutate(["event", "event", "noise_multiplier"], None),
    "inner event not an object": mutate(["event"], [1, 2]),
    "not an object": [good_record()],
    "empty composed": {"module_name": "dp_accounting.dp_event", "class_name": "ComposedDpEvent", "events": []},
    "composed not a list": {
        "module_name": "dp_accounting.dp_event",
        "class_name": "ComposedDpEvent",
        "events": good_record(),
    },
}


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_a_bad_record_is_refused_with_a_clear_error(name):
    with pytest.raises(dp_events.InvalidDpEvent) as excinfo:
        dp_events.event_from_json(BAD_RECORDS[name])
    assert str(excinfo.value)


def test_nesting_too_deep_is_refused():
    record = good_record()
    for _ in range(10):
        record = {"module_name": "dp_accounting.dp_event", "class_name": "ComposedDpEvent", "events": [record]}
    with pytest.raises(dp_events.InvalidDpEvent, match="deeper"):
        dp_events.event_from_json(record)


def test_not_json_is_refused():
    with pytest.raises(dp_events.InvalidDpEvent, match="not JSON"):
        dp_events.event_from_json("{nope")


def test_parsing_never_imports_what_a_record_names(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("event_from_json must not import modules")

    monkeypatch.setattr(importlib, "import_module", refuse)
    assert dp_events.event_from_json(good_record()) == dp_events.round_event(0.01, 1.2, 30)
    with pytest.raises(dp_events.InvalidDpEvent):
        dp_events.event_from_json(mutate(["module_name"], "os"))


def test_serialising_a_non_allow_listed_event_is_refused():
    with pytest.raises(dp_events.InvalidDpEvent):
        dp_events.event_to_json(dpa.NonPrivateDpEvent())
    with pytest.raises(dp_events.InvalidDpEvent):
        dp_events.event_to_json(dpa.PoissonSampledDpEvent(0.1, dpa.LaplaceDpEvent(1.0)))
    with pytest.raises(dp_events.InvalidDpEvent):
        dp_events.round_event(0.0, 1.0, 10)


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
