"""fedgov's DP events and their allow-listed JSON form (accounting/dp_events.py). No database."""

import importlib
import json

import dp_accounting as dpa
import pytest

from accounting import dp_events
from tests.accounting.dp_cases import varied_events


def test_round_event_has_the_design_shape():
    event = dp_events.round_event(0.01, 1.2, 30)
    assert event == dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.2)), 30)
    assert dp_events.evaluation_event(3.0, 2) == dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(3.0), 2)
    both = dp_events.dataset_round_event({"q": 0.01, "z": 1.2, "K": 30, "eval_noise_multiplier": 3.0})
    assert both == dpa.ComposedDpEvent([event, dp_events.evaluation_event(3.0, 1)])
    alone = dp_events.dataset_round_event({"q": 0.01, "z": 1.2, "K": 30, "eval_noise_multiplier": None})
    assert alone == event


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
