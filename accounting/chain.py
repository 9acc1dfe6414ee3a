"""The ledger's hash chain, as pure functions: canonical entries, hashing, streaming checks.

No Django here: `accounting.ledger` feeds it rows from the database, `accounting.bundle` feeds
it entries from an audit bundle, and both get the same answer.

An entry is a JSON document with exactly ENTRY_FIELDS. Its `entry_hash` is

    SHA-256( b"fedgov.ledger.entry.v1\\n" + canonical_json(document) )

where `document` holds every field except `entry_hash` itself (so it includes `prev_hash`,
the previous entry's hash, or 64 zeros for the first entry of a dataset's chain). Canonical
JSON: sorted keys, no whitespace, UTF-8, shortest round-trip floats, no NaN/Infinity.

The verifier replays the chain: it checks every hash link, every field's type, the two-phase
protocol (RESERVE, then at most one COMMIT or RELEASE per round; RELEASE only with proof that
no update was released), and recomputes the spent epsilon from the DP events with
dp-accounting, comparing it to the stored `epsilon_spent_after` of every entry. A RESERVE
whose recomputed epsilon exceeds the budget in force is reported too: invariant 1 is
checkable offline.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from . import accountant as acc
from . import dp_events

FORMAT_VERSION = 1
HASH_DOMAIN = b"fedgov.ledger.entry.v1\n"
GENESIS_HASH = "0" * 64

GRANT, RESERVE, COMMIT, RELEASE = "GRANT", "RESERVE", "COMMIT", "RELEASE"
KINDS = (GRANT, RESERVE, COMMIT, RELEASE)

# The hashed document's fields, in no particular order (canonical JSON sorts them).
ENTRY_FIELDS = (
    "v",
    "dataset",
    "seq",
    "kind",
    "round",
    "event",
    "accountant",
    "delta",
    "epsilon_budget",
    "epsilon_spent_after",
    "actor",
    "created_at",
    "payload",
    "prev_hash",
)

# Recomputed vs stored epsilon. fedgov and the verifier do the same float operations in the
# same order, so RDP agrees to the last bit in practice; the tolerance only absorbs a
# different numpy/libm. PLD composition goes through FFTs, hence the looser bound.
RDP_RTOL = 1e-9
PLD_RTOL = 1e-6
ABS_TOL = 1e-12

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ChainError(Exception):
    """The first bad entry of a chain: which dataset, which entry, and why."""

    def __init__(self, dataset: str, seq: int | None, reason: str) -> None:
        self.dataset, self.seq, self.reason = dataset, seq, reason
        where = f"entry #{seq}" if seq is not None else "chain"
        super().__init__(f"dataset {dataset}: {where}: {reason}")


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    return dp_events.canonical_json(dict(document)).encode("utf-8")


def compute_entry_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical document (every field but entry_hash)."""
    doc = {k: v for k, v in document.items() if k != "entry_hash"}
    return hashlib.sha256(HASH_DOMAIN + canonical_bytes(doc)).hexdigest()


def clean_float(x: float) -> float:
    """A float as the chain stores it: finite, and never -0.0 (which would serialise apart)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"ledger numbers must be finite, got {x!r}")
    return x + 0.0


def spent_epsilon(
    *,
    accountant: str,
    delta: float,
    cum: np.ndarray,
    live_events: list[str],
    orders: tuple[float, ...] = acc.ORDERS,
    pld_interval: float = acc.PLD_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
    """Spent epsilon of a dataset: its cumulative RDP vector (rdp) or the PLD composition of
    its live events (pld), converted at `delta`. The one function fedgov and auditors share."""
    if accountant == "rdp":
        eps = acc.epsilon_from_rdp(cum, delta, orders)
    elif accountant == "pld":
        eps = acc.pld_epsilon(live_events, delta, pld_interval)
    else:
        raise ValueError(f"unknown accountant {accountant!r}")
    return clean_float(eps)


def epsilon_matches(stored: float, recomputed: float, accountant: str) -> bool:
    rtol = PLD_RTOL if accountant == "pld" else RDP_RTOL
    return abs(stored - recomputed) <= ABS_TOL + rtol * abs(recomputed)


@dataclass
class ChainState:
    """Where a chain stands after its last verified entry."""

    dataset: str
    seq: int = 0
    head_hash: str = GENESIS_HASH
    epsilon_budget: float = 0.0
    epsilon_spent: float = 0.0
    accountant: str = "rdp"
    delta: float | None = None
    cum: np.ndarray = field(default_factory=acc.zero_rdp)
    open_rounds: dict[int, str] = field(default_factory=dict)  # round -> event key
    live_events: list[str] = field(default_factory=list)  # reserved, not released; in order
    committed: int = 0
    released: int = 0


class ChainVerifier:
    """Feed a dataset's entries in order, one at a time; the first problem raises ChainError.

    Memory: the RDP vector, the open reservations, the set of round ids ever reserved (to
    refuse a second RESERVE of a round) and the list of live events (references to a few
    shared strings, needed for PLD): a few bytes per round, not per byte of ledger. The RDP
    of identical events is memoised (accountant.rdp_vector), so replaying 100k entries of a
    plan costs one dp-accounting computation per distinct event.
    """

    def __init__(
        self,
        dataset: str,
        *,
        orders: tuple[float, ...] = acc.ORDERS,
        pld_interval: float = acc.PLD_VALUE_DISCRETIZATION_INTERVAL,
    ) -> None:
        self.orders = tuple(orders)
        self.pld_interval = pld_interval
        self.state = ChainState(dataset=dataset, cum=acc.zero_rdp(self.orders))
        self._seen_rounds: set[int] = set()
        self._event_keys: set[str] = set()  # events already checked against the allow-list

    # -- helpers ---------------------------------------------------------------------------
    def _fail(self, seq: int | None, reason: str) -> ChainError:
        return ChainError(self.state.dataset, seq, reason)

    def _event_key(self, seq: int, event: Any) -> str:
        """The event's canonical JSON, refusing anything outside the allow-list or not in
        canonical form (a stored event is always written canonically)."""
        if not isinstance(event, Mapping):
            raise self._fail(seq, "event must be a DP-event object")
        try:
            text = dp_events.canonical_json(event)
        except (TypeError, ValueError) as e:
            raise self._fail(seq, f"event refused: {e}") from None
        if text in self._event_keys:
            return text
        try:
            key = dp_events.event_key(event)
        except (dp_events.InvalidDpEvent, ValueError, TypeError) as e:
            raise self._fail(seq, f"event refused: {e}") from None
        if key != text:
            raise self._fail(seq, "event is not in canonical form")
        if len(self._event_keys) < 100_000:
            self._event_keys.add(key)
        return key

    def _vector(self, seq: int, key: str) -> np.ndarray:
        try:
            return acc.rdp_vector_from_json(key, self.orders)
        except (dp_events.InvalidDpEvent, ValueError) as e:
            raise self._fail(seq, f"event refused: {e}") from None

    # -- the check -------------------------------------------------------------------------
    def feed(self, entry: Mapping[str, Any]) -> None:
        st = self.state
        expected_seq = st.seq + 1
        if not isinstance(entry, Mapping):
            raise self._fail(expected_seq, "entry is not an object")
        seq = entry.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise self._fail(expected_seq, f"seq must be an integer, got {seq!r}")
        if seq != expected_seq:
            raise self._fail(
                expected_seq,
                f"out of sequence: found entry #{seq} where #{expected_seq} belongs (an entry is missing, inserted or reordered)",
            )
        keys = set(entry)
        want = set(ENTRY_FIELDS) | {"entry_hash"}
        if keys != want:
            extra, missing = sorted(map(str, keys - want)), sorted(want - keys)
            raise self._fail(seq, f"fields differ from the format: unexpected {extra}, missing {missing}")

        # Hash chain first: any edit of any field shows here.
        entry_hash, prev_hash = entry["entry_hash"], entry["prev_hash"]
        for name, value in (("entry_hash", entry_hash), ("prev_hash", prev_hash)):
            if not isinstance(value, str) or not _HEX64.fullmatch(value):
                raise self._fail(seq, f"{name} is not 64 lowercase hex digits")
        if prev_hash != st.head_hash:
            raise self._fail(
                seq, f"prev_hash {prev_hash[:12]}... does not match the previous entry's hash {st.head_hash[:12]}..."
            )
        try:
            computed = compute_entry_hash(entry)
        except (TypeError, ValueError) as e:
            raise self._fail(seq, f"entry cannot be serialised canonically: {e}") from None
        if computed != entry_hash:
            raise self._fail(
                seq, f"entry_hash mismatch: the entry was altered (stored {entry_hash[:12]}..., computed {computed[:12]}...)"
            )

        # Field types.
        if entry["v"] != FORMAT_VERSION:
            raise self._fail(seq, f"unknown format version {entry['v']!r}")
        if entry["dataset"] != st.dataset:
            raise self._fail(seq, f"belongs to dataset {entry['dataset']!r}, not {st.dataset!r}")
        kind = entry["kind"]
        if kind not in KINDS:
            raise self._fail(seq, f"unknown kind {kind!r}")
        accountant = entry["accountant"]
        if accountant not in acc.ACCOUNTANTS:
            raise self._fail(seq, f"unknown accountant {accountant!r}")
        delta = _number(entry["delta"])
        if delta is None or not 0.0 < delta < 1.0:
            raise self._fail(seq, f"delta must be in (0, 1), got {entry['delta']!r}")
        budget = _number(entry["epsilon_budget"])
        if budget is None or budget <= 0:
            raise self._fail(seq, f"epsilon_budget must be a positive number, got {entry['epsilon_budget']!r}")
        stored_eps = _number(entry["epsilon_spent_after"])
        if stored_eps is None or stored_eps < 0:
            raise self._fail(seq, f"epsilon_spent_after must be a non-negative number, got {entry['epsilon_spent_after']!r}")
        if not isinstance(entry["actor"], str):
            raise self._fail(seq, "actor must be a string")
        if not isinstance(entry["created_at"], str) or not _is_iso(entry["created_at"]):
            raise self._fail(seq, "created_at must be an ISO-8601 timestamp")
        payload = entry["payload"]
        if not isinstance(payload, Mapping):
            raise self._fail(seq, "payload must be an object")
        rnd = entry["round"]
        if kind == GRANT:
            if rnd is not None or entry["event"] is not None:
                raise self._fail(seq, "a GRANT names no round and no event")
        elif isinstance(rnd, bool) or not isinstance(rnd, int) or rnd <= 0:
            raise self._fail(seq, f"a {kind} must name a round, got {rnd!r}")
        if seq == 1 and kind != GRANT:
            raise self._fail(seq, "a chain opens with a GRANT")

        # Semantics (ARCHITECTURE.md, Ledger 2) and the recomputed epsilon.
        cum, live, key = st.cum, st.live_events, None
        if kind == GRANT:
            granted = _number(payload.get("epsilon_budget"))
            if granted != budget:
                raise self._fail(seq, "a GRANT's payload.epsilon_budget must equal its epsilon_budget")
        else:
            if budget != st.epsilon_budget:
                raise self._fail(seq, f"epsilon_budget {budget!r} differs from the last GRANT ({st.epsilon_budget!r})")
            key = self._event_key(seq, entry["event"])
            if kind == RESERVE:
                if rnd in self._seen_rounds:
                    raise self._fail(seq, f"round {rnd} is reserved a second time")
                cum = acc.rdp_add(cum, self._vector(seq, key))
                live.append(key)  # in place: after a ChainError the state is not used again
            else:
                if rnd not in st.open_rounds:
                    state = "was never reserved" if rnd not in self._seen_rounds else "is already committed or released"
                    raise self._fail(seq, f"{kind} of round {rnd}, which {state}")
                if st.open_rounds[rnd] != key:
                    raise self._fail(seq, f"{kind} of round {rnd} names a different event from its RESERVE")
                if kind == RELEASE:
                    if payload.get("no_update_released") is not True:
                        raise self._fail(seq, "a RELEASE without proof that no update was released (payload.no_update_released)")
                    if not isinstance(payload.get("reason"), str) or not payload["reason"].strip():
                        raise self._fail(seq, "a RELEASE must give its reason")
                    cum = acc.rdp_subtract(cum, self._vector(seq, key))
                    live.remove(key)  # the RESERVE put it there

        # GRANT and COMMIT leave the composition unchanged: reuse the last recomputed figure
        # unless the delta or the accountant changed.
        if kind in (GRANT, COMMIT) and accountant == st.accountant and delta == st.delta:
            recomputed = st.epsilon_spent
        else:
            recomputed = self._spent(accountant, delta, cum, live, seq)
        if not epsilon_matches(stored_eps, recomputed, accountant):
            raise self._fail(seq, f"epsilon_spent_after {stored_eps!r} differs from the recomputed composition {recomputed!r}")
        if kind == RESERVE and recomputed > budget * (1 + RDP_RTOL) + ABS_TOL:
            raise self._fail(seq, f"RESERVE overspends: epsilon {recomputed!r} exceeds the budget {budget!r}")

        # Commit the new state.
        if kind == GRANT:
            st.epsilon_budget = budget
        elif kind == RESERVE:
            st.open_rounds[rnd] = key
            self._seen_rounds.add(rnd)
        elif kind == COMMIT:
            del st.open_rounds[rnd]
            st.committed += 1
        else:
            del st.open_rounds[rnd]
            st.released += 1
        st.seq, st.head_hash = seq, entry_hash
        st.cum, st.live_events = cum, live
        st.epsilon_spent, st.accountant, st.delta = recomputed, accountant, delta

    def _spent(self, accountant: str, delta: float, cum: np.ndarray, live: list[str], seq: int) -> float:
        try:
            return spent_epsilon(
                accountant=accountant, delta=delta, cum=cum, live_events=live, orders=self.orders, pld_interval=self.pld_interval
            )
        except (dp_events.InvalidDpEvent, ValueError) as e:
            raise self._fail(seq, f"cannot recompute epsilon: {e}") from None

    def feed_all(self, entries: Iterable[Mapping[str, Any]]) -> ChainState:
        for entry in entries:
            self.feed(entry)
        return self.state


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
