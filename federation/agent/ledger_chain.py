"""The partner ledger's chain: one replay of its entries, for the writer, the agent's start
and the CLI's --verify.

Each entry is checked against the chain so far (sequence, hashes, the two-phase protocol:
ARCHITECTURE.md, Ledger 2) and the budget it leaves is recomputed with dp-accounting through
`accounting.accountant` and `accounting.chain`: a cumulative RDP vector per data source, so a
check costs O(number of orders) (ARCHITECTURE.md, Privacy model 3). No Django.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from dp_accounting import dp_event

from accounting import accountant as acc
from accounting import chain, dp_events

from .ledger_errors import InvalidEntry, LedgerCorrupt, LedgerError, Overspend
from .ledger_format import (
    BUDGET,
    COMMIT,
    ENTRY_FIELDS,
    FORMAT_VERSION,
    GENESIS_HASH,
    HEX64,
    KINDS,
    OPERATOR,
    RELEASE,
    RESERVE,
    SHOWN,
    SHOWN_SOURCE,
    Budget,
    Reservation,
    RoundKey,
    as_number,
    check_budget_numbers,
    compute_entry_hash,
    is_text,
    parse_entries,
)


@dataclass
class DataState:
    """What one data source has spent and may spend; replaced (not mutated) per entry."""

    cum: np.ndarray
    live: tuple[str, ...] = ()  # event keys reserved and not released, in order (PLD)
    operator: Budget | None = None
    shown_min_eps: float | None = None
    shown_min_eps_by: str | None = None
    shown_min_delta: float | None = None
    shown_seen: frozenset = frozenset()
    spent: float = 0.0
    spent_at: tuple | None = None  # (accountant, delta) the spent figure was converted at
    fingerprint: dict | None = None

    def budget(self) -> Budget | None:
        if self.operator is not None:
            return self.operator
        if self.shown_min_eps is None:
            return None
        return Budget(self.shown_min_eps, self.shown_min_delta, "rdp", SHOWN_SOURCE, self.shown_min_eps_by)


class Chain:
    """A ledger replayed so far: its head, what each data source has spent, each round's record."""

    def __init__(self) -> None:
        self.seq = 0
        self.head = GENESIS_HASH
        self.data: dict[str, DataState] = {}
        self.rounds: dict[RoundKey, Reservation] = {}
        self._event_keys: set[str] = set()

    def state(self, data_id: str) -> DataState:
        st = self.data.get(data_id)
        return st if st is not None else DataState(cum=acc.zero_rdp())

    def event_key(self, event: Any) -> str:
        """Canonical JSON of an allow-listed event (stored events must already be canonical)."""
        if isinstance(event, dp_event.DpEvent):
            try:
                return dp_events.event_key(event)
            except (dp_events.InvalidDpEvent, ValueError, TypeError) as e:
                raise InvalidEntry(f"event refused: {e}") from None
        if not isinstance(event, Mapping):
            raise InvalidEntry("event must be a DP-event object")
        try:
            text = dp_events.canonical_json(event)
            if text in self._event_keys:
                return text
            key = dp_events.event_key(event)
        except (dp_events.InvalidDpEvent, ValueError, TypeError) as e:
            raise InvalidEntry(f"event refused: {e}") from None
        if key != text:
            raise InvalidEntry("event is not in canonical form")
        self._event_keys.add(key)
        return key

    def transition(
        self, kind: str, data_id: Any, rnd: Any, event: Any, payload: Any
    ) -> tuple[DataState, Reservation | None, dict]:
        """The data source's state after this entry, the round's new record, the derived fields.

        Pure: nothing changes until `apply`. Raises InvalidEntry (or Overspend) on any breach.
        """
        if kind not in KINDS:
            raise InvalidEntry(f"unknown kind {kind!r}")
        if not is_text(data_id):
            raise InvalidEntry("data_id must be a non-empty string")
        if not isinstance(payload, Mapping):
            raise InvalidEntry("payload must be an object")
        old = self.state(data_id)
        new = dataclasses.replace(old)
        res: Reservation | None = None
        key: RoundKey | None = None
        if kind in (BUDGET, SHOWN):
            if rnd is not None or event is not None:
                raise InvalidEntry(f"a {kind} names no round and no event")
        else:
            try:
                key = RoundKey.from_json(rnd)
            except LedgerError as e:
                raise InvalidEntry(str(e)) from None
            ekey = self.event_key(event)

        if kind == BUDGET:
            if set(payload) != {"epsilon", "delta", "accountant"}:
                raise InvalidEntry("a BUDGET's payload is {epsilon, delta, accountant}")
            eps, dlt = check_budget_numbers(payload["epsilon"], payload["delta"])
            if payload["accountant"] not in acc.ACCOUNTANTS:
                raise InvalidEntry(f"unknown accountant {payload['accountant']!r}")
            new.operator = Budget(eps, dlt, payload["accountant"], OPERATOR)
        elif kind == SHOWN:
            if set(payload) != {"coordinator", "dataset", "epsilon", "delta"}:
                raise InvalidEntry("a SHOWN's payload is {coordinator, dataset, epsilon, delta}")
            if not is_text(payload["coordinator"]) or not is_text(payload["dataset"]):
                raise InvalidEntry("a SHOWN names its coordinator and dataset")
            eps, dlt = check_budget_numbers(payload["epsilon"], payload["delta"])
            ident = (payload["coordinator"], payload["dataset"], eps, dlt)
            if ident in old.shown_seen:
                raise InvalidEntry("this budget was already recorded as shown")
            new.shown_seen = old.shown_seen | {ident}
            if old.shown_min_eps is None or eps < old.shown_min_eps:
                new.shown_min_eps, new.shown_min_eps_by = eps, f"{payload['coordinator']} dataset {payload['dataset']}"
            if old.shown_min_delta is None or dlt < old.shown_min_delta:
                new.shown_min_delta = dlt
        elif kind == RESERVE:
            if key in self.rounds:
                raise InvalidEntry(f"round {key} is reserved a second time")
            if set(payload) != {"ticket_hash", "fingerprint", "data_path"}:
                raise InvalidEntry("a RESERVE's payload is {ticket_hash, fingerprint, data_path}")
            ticket = payload["ticket_hash"]
            if ticket is not None and not is_text(ticket):
                raise InvalidEntry("ticket_hash must be a non-empty string or null")
            fp = payload["fingerprint"]
            if (
                not isinstance(fp, Mapping)
                or set(fp) != {"sha256", "records", "bytes"}
                or not isinstance(fp["sha256"], str)
                or not HEX64.fullmatch(fp["sha256"])
                or any(isinstance(fp[k], bool) or not isinstance(fp[k], int) or fp[k] < 0 for k in ("records", "bytes"))
            ):
                raise InvalidEntry("fingerprint must be {sha256: 64 hex, records: int >= 0, bytes: int >= 0}")
            if payload["data_path"] is not None and not is_text(payload["data_path"]):
                raise InvalidEntry("data_path must be a non-empty string or null")
            if old.budget() is None:
                raise InvalidEntry("a RESERVE with no local budget in force")
            new.cum = acc.rdp_add(old.cum, self._vector(ekey))
            new.live = (*old.live, ekey)
            new.fingerprint = dict(fp)
            res = Reservation(key, data_id, self.seq + 1, "", json.loads(ekey), ticket, dict(fp), "reserved")
        else:  # COMMIT, RELEASE
            prior = self.rounds.get(key)
            if prior is None or prior.state != "reserved":
                state = "never reserved" if prior is None else prior.state
                if kind == RELEASE and prior is not None and prior.state == "committed":
                    raise InvalidEntry(f"a RELEASE of round {key}, which is committed: its update may have left")
                raise InvalidEntry(f"a {kind} of round {key}, which is {state}")
            if prior.data_id != data_id:
                raise InvalidEntry(f"a {kind} of round {key} on data {data_id!r}; it was reserved on {prior.data_id!r}")
            if dp_events.canonical_json(prior.event) != ekey:
                raise InvalidEntry(f"a {kind} of round {key} names a different event from its RESERVE")
            if kind == COMMIT:
                if payload:
                    raise InvalidEntry("a COMMIT's payload is {}")
                res = dataclasses.replace(prior, state="committed")
            else:
                if set(payload) != {"reason"} or not is_text(payload["reason"]) or not payload["reason"].strip():
                    raise InvalidEntry("a RELEASE's payload is {reason: non-empty text}")
                new.cum = acc.rdp_subtract(old.cum, self._vector(ekey))
                live = list(old.live)
                live.remove(ekey)  # the RESERVE put it there
                new.live = tuple(live)
                res = dataclasses.replace(prior, state="released")

        budget = new.budget()
        if budget is None:
            new.spent, new.spent_at = 0.0, None
        elif kind in (COMMIT, SHOWN, BUDGET) and old.spent_at == (budget.accountant, budget.delta):
            pass  # the composition and the conversion are unchanged
        else:
            try:
                new.spent = chain.spent_epsilon(accountant=budget.accountant, delta=budget.delta, cum=new.cum, live_events=list(new.live))
            except (dp_events.InvalidDpEvent, ValueError) as e:
                raise InvalidEntry(f"cannot compose: {e}") from None
            new.spent_at = (budget.accountant, budget.delta)
        if kind == RESERVE and new.spent > budget.epsilon * (1 + chain.RDP_RTOL) + chain.ABS_TOL:
            raise Overspend(old.spent, new.spent, budget)
        derived = {
            "epsilon_budget": budget.epsilon if budget else None,
            "delta": budget.delta if budget else None,
            "accountant": budget.accountant if budget else None,
            "budget_source": budget.source if budget else None,
            "epsilon_spent_after": new.spent,
        }
        return new, res, derived

    def _vector(self, key: str) -> np.ndarray:
        try:
            return acc.rdp_vector_from_json(key)
        except (dp_events.InvalidDpEvent, ValueError) as e:
            raise InvalidEntry(f"event refused: {e}") from None

    def feed(self, entry: Any) -> None:
        """Check one stored entry against the chain so far, then apply it."""
        expected = self.seq + 1
        if not isinstance(entry, Mapping):
            raise InvalidEntry("entry is not a JSON object")
        want = set(ENTRY_FIELDS) | {"entry_hash"}
        if set(entry) != want:
            raise InvalidEntry(f"fields differ from the format: unexpected {sorted(set(entry) - want)}, missing {sorted(want - set(entry))}")
        if entry["seq"] != expected or isinstance(entry["seq"], bool):
            raise InvalidEntry(f"out of sequence: found seq {entry['seq']!r} on line {expected}")
        for name in ("entry_hash", "prev_hash"):
            if not isinstance(entry[name], str) or not HEX64.fullmatch(entry[name]):
                raise InvalidEntry(f"{name} is not 64 lowercase hex digits")
        if entry["prev_hash"] != self.head:
            raise InvalidEntry(f"prev_hash {entry['prev_hash'][:12]}... does not match the previous entry's hash {self.head[:12]}...")
        try:
            computed = compute_entry_hash(entry)
        except (TypeError, ValueError) as e:
            raise InvalidEntry(f"entry cannot be serialised canonically: {e}") from None
        if computed != entry["entry_hash"]:
            raise InvalidEntry(f"entry_hash mismatch: the entry was altered (stored {entry['entry_hash'][:12]}..., computed {computed[:12]}...)")
        if entry["v"] != FORMAT_VERSION:
            raise InvalidEntry(f"unknown format version {entry['v']!r}")
        try:
            datetime.fromisoformat(entry["created_at"])
        except (TypeError, ValueError):
            raise InvalidEntry("created_at must be an ISO-8601 timestamp") from None
        new, res, derived = self.transition(entry["kind"], entry["data_id"], entry["round"], entry["event"], entry["payload"])
        for name, value in derived.items():
            stored = entry[name]
            if name == "epsilon_spent_after":
                ok = as_number(stored) is not None and chain.epsilon_matches(float(stored), value, entry["accountant"] or "rdp")
            else:
                ok = stored == value and type(stored) is type(value)
            if not ok:
                raise InvalidEntry(f"{name} {stored!r} differs from the recomputed {value!r}")
        self.apply(entry, new, res)

    def apply(self, entry: Mapping[str, Any], new: DataState, res: Reservation | None) -> None:
        self.data[entry["data_id"]] = new
        if res is not None:
            if entry["kind"] == RESERVE:
                res = dataclasses.replace(res, seq=entry["seq"], entry_hash=entry["entry_hash"])
            self.rounds[res.key] = res
        self.seq, self.head = entry["seq"], entry["entry_hash"]


def replay(path: Path, lines: list[bytes]) -> tuple[Chain, list[dict]]:
    ch, entries = Chain(), []
    for n, entry in parse_entries(path, lines):
        try:
            ch.feed(entry)
        except InvalidEntry as e:
            raise LedgerCorrupt(path, n, str(e)) from None
        entries.append(entry)
    return ch, entries
