"""The DP events fedgov charges and their JSON form, built on Google's dp-accounting.

* the events (`round_event`, `evaluation_event`, `round_composition`, `dataset_round_event`);
* a strict JSON form of those events (`event_to_json` / `event_from_json`) through an
  allow-list. dp-accounting's own `DpEvent.from_named_tuple` imports whatever module a
  record names, so a stored or uploaded record must never reach it unchecked;
* `canonical_json`, the one JSON text of events and ledger entries that hashes and
  signatures cover, and `event_key`, an event's canonical JSON.

Composition and conversion to epsilon are `accounting.accountant`. Pure (dp-accounting only,
no Django): the partner's agent and the offline audit-bundle verifier use it too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dp_accounting import dp_event

__all__ = [
    "ALLOWED_EVENT_CLASSES",
    "InvalidDpEvent",
    "round_event",
    "evaluation_event",
    "round_composition",
    "dataset_round_event",
    "event_to_json",
    "event_from_json",
    "canonical_json",
    "event_key",
]

# --- limits on what a JSON record may describe -------------------------------------------
_MODULE = dp_event.DpEvent.__module__  # "dp_accounting.dp_event"
_MAX_DEPTH = 8  # Composed(SelfComposed(PoissonSampled(Gaussian))) is depth 4
_MAX_COMPOSED = 1024  # events in one ComposedDpEvent
_MAX_COUNT = 10**9  # SelfComposed count (steps in a round, releases)
_MAX_NOISE = 1e6


class InvalidDpEvent(ValueError):
    """A DP-event record is malformed, out of range or names a class outside the allow-list."""


# --- building events ---------------------------------------------------------------------


def round_event(q: float, z: float, K: int) -> dp_event.DpEvent:  # noqa: N803 (paper's names)
    """One round of DP-SGD on one dataset: K steps of Poisson(q)-sampled Gaussian(z).

    `q` is the Poisson sampling rate (batch size / records, capped at 1), `z` the noise
    multiplier (noise std / clip norm), `K` the number of local steps in the round.
    """
    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(float(q), dp_event.GaussianDpEvent(float(z))), int(K))
    _validate(event_to_json(event))
    return event


def evaluation_event(noise_multiplier: float, count: int) -> dp_event.DpEvent:
    """`count` Gaussian count releases, each with noise std = noise_multiplier * sensitivity."""
    event = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(float(noise_multiplier)), int(count))
    _validate(event_to_json(event))
    return event


def round_composition(events: Sequence[dp_event.DpEvent]) -> dp_event.DpEvent:
    """Every release of one round on one dataset, composed (training, evaluation, ...).

    A single event is returned as is, so a round without evaluation stores the plain
    SelfComposed(PoissonSampled(Gaussian)) event.
    """
    events = list(events)
    if not events:
        raise InvalidDpEvent("a round must release at least one DP event")
    if len(events) == 1:
        return events[0]
    return dp_event.ComposedDpEvent(events)


def dataset_round_event(params: Mapping[str, Any]) -> dp_event.DpEvent:
    """The DP event one round charges to one dataset, from `TrainingPlan.dp_params_for()`.

    `params` has "q", "z", "K" and optionally "eval_noise_multiplier" (None = no evaluation
    release) and "eval_count" (Gaussian count releases per round, default 1).
    """
    try:
        events = [round_event(params["q"], params["z"], params["K"])]
    except KeyError as e:
        raise InvalidDpEvent(f"DP parameters lack {e.args[0]!r}") from None
    eval_z = params.get("eval_noise_multiplier")
    if eval_z is not None:
        events.append(evaluation_event(eval_z, int(params.get("eval_count") or 1)))
    return round_composition(events)


# --- JSON form ----------------------------------------------------------------------------
#
# The JSON form mirrors dp-accounting's own named-tuple form (module_name, class_name, then
# the attrs fields), so a record is self-describing for an auditor; but it is *parsed* only
# through the allow-list below, field by field.


def _float_field(name: str, *, lo: float, hi: float, lo_open: bool) -> Any:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidDpEvent(f"{path}.{name} must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidDpEvent(f"{path}.{name} must be finite")
        if (value <= lo if lo_open else value < lo) or value > hi:
            bracket = "(" if lo_open else "["
            raise InvalidDpEvent(f"{path}.{name}={value!r} outside {bracket}{lo}, {hi}]")
        return value

    return check


def _int_field(name: str, *, lo: int, hi: int) -> Any:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            # JSON written by other tools may say 14063.0; accept integral floats only.
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise InvalidDpEvent(f"{path}.{name} must be an integer")
        if not lo <= value <= hi:
            raise InvalidDpEvent(f"{path}.{name}={value!r} outside [{lo}, {hi}]")
        return value

    return check


_EVENT = object()  # marker: a nested event
_EVENT_LIST = object()  # marker: a list of nested events

# class name -> (class, {field name: checker or marker}). Only what fedgov charges.
_ALLOWED: dict[str, tuple[type, dict[str, Any]]] = {
    "GaussianDpEvent": (
        dp_event.GaussianDpEvent,
        {"noise_multiplier": _float_field("noise_multiplier", lo=0.0, hi=_MAX_NOISE, lo_open=True)},
    ),
    "PoissonSampledDpEvent": (
        dp_event.PoissonSampledDpEvent,
        {
            "sampling_probability": _float_field("sampling_probability", lo=0.0, hi=1.0, lo_open=True),
            "event": _EVENT,
        },
    ),
    "SelfComposedDpEvent": (
        dp_event.SelfComposedDpEvent,
        {"event": _EVENT, "count": _int_field("count", lo=1, hi=_MAX_COUNT)},
    ),
    "ComposedDpEvent": (dp_event.ComposedDpEvent, {"events": _EVENT_LIST}),
}
ALLOWED_EVENT_CLASSES: tuple[str, ...] = tuple(sorted(_ALLOWED))


def event_to_json(event: dp_event.DpEvent) -> dict:
    """The JSON-ready dict of an allow-listed event (raises InvalidDpEvent otherwise)."""
    return _to_json(event, "event", 0)


def _to_json(event: Any, path: str, depth: int) -> dict:
    if depth >= _MAX_DEPTH:
        raise InvalidDpEvent(f"{path}: events nested deeper than {_MAX_DEPTH}")
    name = type(event).__name__
    spec = _ALLOWED.get(name)
    if spec is None or type(event) is not spec[0]:
        raise InvalidDpEvent(f"{path}: {type(event).__qualname__} is not an allowed DP event")
    out: dict[str, Any] = {"module_name": _MODULE, "class_name": name}
    for field, check in spec[1].items():
        value = getattr(event, field)
        if check is _EVENT:
            out[field] = _to_json(value, f"{path}.{field}", depth + 1)
        elif check is _EVENT_LIST:
            out[field] = [_to_json(v, f"{path}.{field}[{i}]", depth + 1) for i, v in enumerate(value)]
        else:
            out[field] = check(value, path)
    return out


def event_from_json(data: Any) -> dp_event.DpEvent:
    """Parse a JSON record (dict, or a JSON string) into a DpEvent, refusing anything else.

    The record must name module "dp_accounting.dp_event" and one of ALLOWED_EVENT_CLASSES,
    carry exactly that class's fields, with types and ranges checked. No import happens.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise InvalidDpEvent(f"not JSON: {e}") from None
    return _from_json(data, "event", 0)


def _from_json(data: Any, path: str, depth: int) -> dp_event.DpEvent:
    if depth >= _MAX_DEPTH:
        raise InvalidDpEvent(f"{path}: events nested deeper than {_MAX_DEPTH}")
    if not isinstance(data, Mapping):
        raise InvalidDpEvent(f"{path} must be an object, got {type(data).__name__}")
    module_name, class_name = data.get("module_name"), data.get("class_name")
    if module_name != _MODULE:
        raise InvalidDpEvent(f"{path}: module {module_name!r} is not allowed (only {_MODULE!r})")
    spec = _ALLOWED.get(class_name) if isinstance(class_name, str) else None
    if spec is None:
        raise InvalidDpEvent(f"{path}: class {class_name!r} is not allowed (allowed: {', '.join(ALLOWED_EVENT_CLASSES)})")
    cls, fields = spec
    expected = {"module_name", "class_name", *fields}
    if set(data) != expected:
        extra, missing = set(data) - expected, expected - set(data)
        raise InvalidDpEvent(
            f"{path}: {class_name} fields mismatch"
            + (f"; unexpected {sorted(map(str, extra))}" if extra else "")
            + (f"; missing {sorted(missing)}" if missing else "")
        )
    kwargs: dict[str, Any] = {}
    for field, check in fields.items():
        value = data[field]
        if check is _EVENT:
            kwargs[field] = _from_json(value, f"{path}.{field}", depth + 1)
        elif check is _EVENT_LIST:
            if not isinstance(value, list) or not value:
                raise InvalidDpEvent(f"{path}.{field} must be a non-empty list")
            if len(value) > _MAX_COMPOSED:
                raise InvalidDpEvent(f"{path}.{field} has more than {_MAX_COMPOSED} events")
            kwargs[field] = [_from_json(v, f"{path}.{field}[{i}]", depth + 1) for i, v in enumerate(value)]
        else:
            kwargs[field] = check(value, path)
    return cls(**kwargs)


def _validate(data: dict) -> None:
    _from_json(data, "event", 0)


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, no NaN/Infinity, UTF-8 as is.

    Accepts a DpEvent (serialised through the allow-list) or any JSON-ready value. Python's
    float repr is the shortest string that round-trips, so equal floats give equal text.
    """
    if isinstance(obj, dp_event.DpEvent):
        obj = event_to_json(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_key(event: dp_event.DpEvent | Mapping) -> str:
    """The canonical JSON of an event given as a DpEvent or as a (validated) JSON dict."""
    if isinstance(event, dp_event.DpEvent):
        return canonical_json(event)
    return canonical_json(event_to_json(event_from_json(event)))
