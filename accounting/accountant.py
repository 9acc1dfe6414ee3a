"""Privacy accounting for fedgov, built on Google's dp-accounting.

Nothing here hand-writes an RDP or PLD formula: every number comes from
`dp_accounting.rdp.RdpAccountant`, `dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon`
or `dp_accounting.pld.PLDAccountant`. The DP events fedgov charges, their strict JSON form
and the canonical JSON of ledger entries are `accounting.dp_events`. What this module adds:

* the per-dataset *cumulative RDP vector*: RDP composes by adding vectors over a fixed list
  of orders, so the ledger keeps the sum of the vectors of every spent or reserved event and
  "can this round run" is `epsilon_from_rdp(cum + rdp_vector(new), delta) <= budget`, which
  costs O(number of orders) instead of O(ledger length);
* PLD accounting (selectable per dataset), with the composed PLD cached by event-sequence
  prefix.

This module is pure (numpy + dp-accounting, no Django): the offline audit-bundle verifier
(`accounting.bundle`) uses it too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from . import dp_events

__all__ = [
    "ORDERS",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "ACCOUNTANTS",
    "rdp_vector",
    "rdp_vector_from_json",
    "rdp_add",
    "rdp_subtract",
    "zero_rdp",
    "rdp_to_json",
    "rdp_from_json",
    "epsilon_from_rdp",
    "compose_rdp",
    "compose_epsilon",
    "pld_epsilon",
    "accountant_parameters",
    "use_curve_store",
]

# The fixed RDP orders: dp-accounting's defaults for RdpAccountant (1.1 ... 10.9, 11 ... 63,
# 128, 256, 512, 1024). Every cumulative vector in the ledger is indexed by these, and audit
# bundles carry them so that an auditor recomputes over the same orders.
ORDERS: tuple[float, ...] = tuple(float(o) for o in rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

# PLD discretisation. dp-accounting's PLDs are *pessimistic* by default: a coarser interval
# can only make epsilon larger (a valid upper bound), never smaller. 1e-4 is the library's
# default; it is ~10x slower than 1e-3 for an event with thousands of steps (0.33 s vs 0.04 s
# for q=256/60000, z=1.1, K=14063 on one core) and gives an epsilon ~0.4 % lower. fedgov uses
# the library default so PLD datasets get the tighter figure; a deployment can trade
# precision for speed by passing another interval (recorded in the audit bundle).
PLD_VALUE_DISCRETIZATION_INTERVAL: float = 1e-4

AccountantName = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")

# --- RDP ----------------------------------------------------------------------------------


def _orders_tuple(orders: Sequence[float] | None) -> tuple[float, ...]:
    if orders is None:
        return ORDERS
    t = tuple(float(o) for o in orders)
    if not t or any(not math.isfinite(o) or o <= 1.0 for o in t):
        raise ValueError("RDP orders must be a non-empty list of finite numbers > 1")
    return t


# --- a curve store shared by processes ------------------------------------------------------
#
# An RDP curve is a pure function of (event, orders, dp-accounting version), and computing
# one costs 30-150 ms of pure Python (a Poisson-subsampled Gaussian at fractional orders).
# The in-process memo below is lost with every process: each web worker, each Celery pool
# child and each management command would pay it again for every dataset of a plan (50
# datasets: several seconds on the first governance check each of them runs). With a store
# directory set (`use_curve_store`, done by the accounting app from settings), a curve is
# computed once per machine and read back (~0.1 ms) by every other process. A stored file
# names its key, orders and library version and is checked on reading; anything that does
# not match or parse is recomputed, never trusted.
_curve_store: Path | None = None


def use_curve_store(directory: str | os.PathLike | None) -> None:
    """Keep computed RDP curves in `directory` (None: in-process memo only)."""
    global _curve_store
    _curve_store = Path(directory) if directory else None
    if _curve_store is not None:
        _curve_store.mkdir(parents=True, exist_ok=True)


@functools.cache
def _library_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("dp-accounting")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _stored_curve_path(key: str, orders: tuple[float, ...]) -> tuple[Path, dict] | None:
    if _curve_store is None:
        return None
    ident = {"key": key, "orders": list(orders), "library_version": _library_version()}
    digest = hashlib.sha256(dp_events.canonical_json(ident).encode()).hexdigest()
    return _curve_store / f"{digest}.json", ident


def _load_curve(key: str, orders: tuple[float, ...]) -> np.ndarray | None:
    where = _stored_curve_path(key, orders)
    if where is None:
        return None
    path, ident = where
    try:
        data = json.loads(path.read_text())
        if {k: data.get(k) for k in ident} != ident:
            return None
        return rdp_from_json(data["rdp"], orders)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, partly written by a crashed process, or not ours: recompute


def _store_curve(key: str, orders: tuple[float, ...], vector: np.ndarray) -> None:
    where = _stored_curve_path(key, orders)
    if where is None:
        return
    path, ident = where
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps({**ident, "rdp": rdp_to_json(vector)}))
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only or full disk costs speed, not correctness


@functools.lru_cache(maxsize=4096)
def _rdp_vector_cached(key: str, orders: tuple[float, ...]) -> np.ndarray:
    vector = _load_curve(key, orders)
    if vector is None:
        event = dp_events.event_from_json(key)
        accountant = rdp_privacy_accountant.RdpAccountant(orders=list(orders))
        accountant.compose(event)
        vector = accountant.rdp  # a copy of the accountant's _rdp array
        # dp-accounting sets an order to +inf when its series fails to converge ("excluding
        # this order from the epsilon computation"): +inf is legitimate, NaN or negative is not.
        if np.any(np.isnan(vector)) or np.any(vector < 0):
            raise dp_events.InvalidDpEvent(f"event has a NaN or negative RDP curve: {key}")
        _store_curve(key, orders, vector)
    vector.setflags(write=False)  # shared by the cache: nobody may modify it in place
    return vector


def rdp_vector(event: dp_event.DpEvent | Mapping, orders: Sequence[float] | None = None) -> np.ndarray:
    """The RDP curve of `event` at `orders` (default ORDERS), from dp-accounting's RdpAccountant.

    Memoised by the event's canonical JSON: identical events (every round of a plan on a
    dataset) cost one ~20 ms computation. The returned array is read-only.
    """
    return _rdp_vector_cached(dp_events.event_key(event), _orders_tuple(orders))


def rdp_vector_from_json(key: str, orders: Sequence[float] | None = None) -> np.ndarray:
    """`rdp_vector` of an event given as canonical JSON text (the ledger's stored form).

    Text that is not already canonical is re-parsed and canonicalised first, so the cache
    cannot be poisoned by a record that parses differently from its key.
    """
    orders_t = _orders_tuple(orders)
    if _is_canonical(key):
        return _rdp_vector_cached(key, orders_t)
    return rdp_vector(dp_events.event_from_json(key), orders_t)


@functools.lru_cache(maxsize=4096)
def _is_canonical(key: str) -> bool:
    try:
        return dp_events.canonical_json(dp_events.event_to_json(dp_events.event_from_json(key))) == key
    except dp_events.InvalidDpEvent:
        return False


def zero_rdp(orders: Sequence[float] | None = None) -> np.ndarray:
    return np.zeros(len(_orders_tuple(orders)), dtype=np.float64)


def rdp_add(cum: Sequence[float] | np.ndarray, vector: np.ndarray) -> np.ndarray:
    """cum + vector, as the ledger does on RESERVE (RDP composes additively per order)."""
    return np.asarray(cum, dtype=np.float64) + vector


def rdp_subtract(cum: Sequence[float] | np.ndarray, vector: np.ndarray) -> np.ndarray:
    """cum - vector, as the ledger does on RELEASE, clamped at 0.

    Floating-point residue after adding and subtracting the same vector can be a tiny
    negative number, which dp-accounting's conversion would read as "epsilon 0 at that
    order"; clamping keeps the curve a valid bound. An order where the released event was
    +inf (excluded by dp-accounting) stays +inf: we cannot know what is left there, so that
    order stays excluded (when in doubt, the budget stays spent).
    """
    cum = np.asarray(cum, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.where(np.isinf(vector), cum, cum - vector)
    return np.maximum(out, 0.0)


def rdp_to_json(vector: Sequence[float] | np.ndarray) -> list[float | None]:
    """A JSON-safe list (+inf, an excluded order, becomes null; PostgreSQL's jsonb and
    canonical JSON have no Infinity)."""
    return [None if math.isinf(v) else float(v) for v in np.asarray(vector, dtype=np.float64)]


def rdp_from_json(data: Sequence[float | None], orders: Sequence[float] | None = None) -> np.ndarray:
    """Inverse of rdp_to_json, checking length and values."""
    n = len(_orders_tuple(orders))
    if not isinstance(data, (list, tuple)) or len(data) != n:
        raise ValueError(f"an RDP vector must be a list of {n} numbers")
    if all(type(v) is float for v in data):  # the usual case: no excluded order, plain floats
        out = np.array(data, dtype=np.float64)
        if not (np.isfinite(out).all() and (out >= 0).all()):
            raise ValueError("RDP vector entries must be non-negative finite numbers or null")
        return out
    if any(isinstance(v, bool) or not (v is None or isinstance(v, (int, float))) for v in data):
        raise ValueError("RDP vector entries must be numbers or null")
    out = np.array([np.inf if v is None else v for v in data], dtype=np.float64)
    if np.isnan(out).any() or (out < 0).any() or (np.isinf(out) & ~np.array([v is None for v in data])).any():
        raise ValueError("RDP vector entries must be non-negative finite numbers or null")
    return out


def epsilon_from_rdp(vector: Sequence[float] | np.ndarray, delta: float, orders: Sequence[float] | None = None) -> float:
    """Epsilon at `delta` of an RDP curve, by dp-accounting's own conversion (compute_epsilon).

    This is exactly what RdpAccountant.get_epsilon does with its internal vector.
    """
    _check_delta(delta)
    orders_t = _orders_tuple(orders)
    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (len(orders_t),):
        raise ValueError(f"RDP vector has shape {vector.shape}, expected ({len(orders_t)},)")
    if not vector.any():
        return 0.0
    eps, _order = rdp_privacy_accountant.compute_epsilon(orders_t, vector, delta)
    return float(eps)


def compose_rdp(events: Iterable[dp_event.DpEvent | Mapping | str], orders: Sequence[float] | None = None) -> np.ndarray:
    """Sum of the RDP curves of `events` (canonical JSON strings are accepted)."""
    orders_t = _orders_tuple(orders)
    cum = zero_rdp(orders_t)
    for event in events:
        vec = rdp_vector_from_json(event, orders_t) if isinstance(event, str) else rdp_vector(event, orders_t)
        cum = rdp_add(cum, vec)
    return cum


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


# --- PLD ----------------------------------------------------------------------------------
#
# PLD composition cannot be kept as a small additive vector: a composed PLD is a discretised
# distribution whose support grows with every composition, and composing two costs an FFT
# over that support (tens to hundreds of ms for DP-SGD rounds at 1e-4). Releasing an event
# cannot be "subtracted" either. So for PLD datasets:
#   * each event's own PLD is memoised by its canonical JSON (identical rounds cost once);
#   * composed PLDs are cached by a digest chain over the ordered event list, so the usual
#     check "current events + one new round" finds the current composition in the cache and
#     does one composition; a RELEASE in the middle restarts from the longest cached prefix.
# A cold check or an audit over n events costs n PLD compositions. The ledger still keeps the
# RDP vector for PLD datasets (cheap, and an upper bound the auditor can compare).


@functools.lru_cache(maxsize=256)
def _event_pld(key: str, interval: float) -> Any:
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_events.event_from_json(key))
    # fedgov's allow-list refuses zero noise and zero sampling, so the accountant's
    # "contains a non-DP event" flag can never be set; the composed PLD is all there is.
    assert not accountant._contains_non_dp_event  # noqa: SLF001
    return accountant._pld  # noqa: SLF001 (dp-accounting exposes no public accessor)


class _PldPrefixCache:
    """LRU of composed PLDs keyed by a digest chain over the ordered event keys."""

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Any:
        with self._lock:
            pld = self._data.get(digest)
            if pld is not None:
                self._data.move_to_end(digest)
            return pld

    def put(self, digest: bytes, pld: Any) -> None:
        with self._lock:
            self._data[digest] = pld
            self._data.move_to_end(digest)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_pld_cache = _PldPrefixCache()


def _digest_chain(keys: Sequence[str], interval: float) -> list[bytes]:
    digests = []
    d = hashlib.sha256(f"pld:{interval!r}".encode()).digest()
    for key in keys:
        d = hashlib.sha256(d + key.encode()).digest()
        digests.append(d)
    return digests


def pld_epsilon(
    events: Sequence[dp_event.DpEvent | Mapping | str],
    delta: float,
    value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
    """Epsilon at `delta` of the PLD composition of `events` (in order), prefix-cached."""
    _check_delta(delta)
    interval = float(value_discretization_interval)
    if not 0.0 < interval <= 1.0:
        raise ValueError("value_discretization_interval must be in (0, 1]")
    keys = [e if isinstance(e, str) and _is_canonical(e) else dp_events.event_key(_parse(e)) for e in events]
    if not keys:
        return 0.0
    digests = _digest_chain(keys, interval)
    start, pld = 0, None
    for i in range(len(keys) - 1, -1, -1):  # longest cached prefix
        pld = _pld_cache.get(digests[i])
        if pld is not None:
            start = i + 1
            break
    for i in range(start, len(keys)):
        step = _event_pld(keys[i], interval)
        pld = step if pld is None else pld.compose(step)
        _pld_cache.put(digests[i], pld)
    return float(pld.get_epsilon_for_delta(delta))


def _parse(event: dp_event.DpEvent | Mapping | str) -> dp_event.DpEvent:
    return event if isinstance(event, dp_event.DpEvent) else dp_events.event_from_json(event)


def compose_epsilon(
    events: Sequence[dp_event.DpEvent | Mapping | str],
    delta: float,
    accountant: AccountantName = "rdp",
    *,
    value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL,
    orders: Sequence[float] | None = None,
) -> float:
    """Epsilon at `delta` of the composition of `events` under the chosen accountant."""
    if accountant == "rdp":
        return epsilon_from_rdp(compose_rdp(events, orders), delta, orders)
    if accountant == "pld":
        return pld_epsilon(events, delta, value_discretization_interval)
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def accountant_parameters(
    value_discretization_interval: float = PLD_VALUE_DISCRETIZATION_INTERVAL,
) -> dict:
    """What an auditor needs to recompute fedgov's figures (goes into audit bundles)."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("dp-accounting")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {
        "library": "dp-accounting",
        "library_version": version,
        "rdp_orders": list(ORDERS),
        "rdp_conversion": "dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon",
        "pld_value_discretization_interval": float(value_discretization_interval),
        "neighboring_relation": "ADD_OR_REMOVE_ONE",
        "allowed_event_classes": list(dp_events.ALLOWED_EVENT_CLASSES),
    }
