"""The partner's own privacy ledger: append-only, hash-chained, one budget per data source.

The coordinator keeps a ledger per dataset; a partner cannot rely on it alone: a careless or
compromised coordinator could register the same records as two datasets, or show a budget
and charge another. So the agent keeps its own (docs/PARTNER-LEDGER.md), keyed by the data
source it trains on (`--data-id`, by default the data file's absolute path), and refuses a
round that would take that source over its operator's budget, whatever the coordinator says.

* Composition is dp-accounting's, through the project's pure modules `accounting.dp_events`
  (DP-event JSON, canonical JSON), `accounting.accountant` (RDP curves, the epsilon
  conversion) and `accounting.chain` (spent epsilon): the same numbers as the coordinator's ledger. Each data source keeps a
  cumulative RDP vector, so a check costs O(number of orders) (ARCHITECTURE.md, Privacy
  model 3), not a recomposition of its history.
* Two-phase, as the coordinator (ARCHITECTURE.md, Ledger 2): RESERVE is durable (file and
  directory fsynced) before the agent trains; COMMIT is written before the masked input is
  sent; RELEASE only while no COMMIT exists, i.e. while no update has left this machine.
  An open reservation counts as spent.
* Append-only JSON lines, each with prev_hash and entry_hash (ARCHITECTURE.md, Ledger 3).
  A crash mid-append leaves at most a final line without its newline: that append never
  returned, so nothing relied on it; it is ignored, and cut off when the agent next opens
  the ledger. Any other damage fails verification, naming the entry.
* One agent per state directory: an exclusive `fcntl.flock`.

No Django (ARCHITECTURE.md, Layers): numpy, dp-accounting and the standard library.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from dp_accounting import dp_event

from accounting import accountant as acc
from accounting import chain, dp_events

logger = logging.getLogger("fedgov.agent.ledger")

__all__ = [
    "LEDGER_FILE",
    "LOCK_FILE",
    "Budget",
    "RoundKey",
    "Reservation",
    "PartnerLedger",
    "LedgerView",
    "LedgerError",
    "LocalBudgetExceeded",
    "LocalBudgetUnset",
    "RoundAlreadyReserved",
    "ReleaseRefused",
    "UnknownRound",
    "LedgerLocked",
    "LedgerCorrupt",
    "default_data_id",
    "data_fingerprint",
    "compute_entry_hash",
    "read_ledger",
]

LEDGER_FILE = "partner-ledger.jsonl"
LOCK_FILE = "partner-ledger.lock"
FORMAT_VERSION = 1
HASH_DOMAIN = b"fedgov.partner-ledger.entry.v1\n"
GENESIS_HASH = chain.GENESIS_HASH

BUDGET, SHOWN, RESERVE, COMMIT, RELEASE = "BUDGET", "SHOWN", "RESERVE", "COMMIT", "RELEASE"
KINDS = (BUDGET, SHOWN, RESERVE, COMMIT, RELEASE)
OPERATOR, SHOWN_SOURCE = "operator", "shown"

ENTRY_FIELDS = (
    "v",
    "seq",
    "kind",
    "data_id",
    "round",
    "event",
    "payload",
    "epsilon_budget",
    "delta",
    "accountant",
    "budget_source",
    "epsilon_spent_after",
    "created_at",
    "prev_hash",
)
_ROUND_FIELDS = {"coordinator", "round", "dataset"}
_MAX_TEXT = 4096  # data ids, coordinator names, slugs, reasons
_HEX64 = re.compile(r"[0-9a-f]{64}")

# --- errors ---------------------------------------------------------------------------------

MSG_BUDGET_EXCEEDED = (
    "Local budget exceeded for data {data_id}: spent epsilon {spent:.4f}, this round requests {requested:.4f} "
    "(together {would_spend:.4f}), budget {budget:.4f} at delta {delta:g}; round {round} refused, whatever the coordinator says."
)
MSG_BUDGET_UNSET = (
    "No local budget for data {data_id}: the operator set none (--budget/--delta) and no coordinator has shown one; "
    "round {round} refused."
)
MSG_ALREADY_RESERVED = "Round {round} is already in the local ledger ({state}, entry #{seq}): it is never trained twice."
MSG_RELEASE_REFUSED = (
    "Refused to release round {round}: it is committed (its masked input may have left this machine); the budget stays spent."
)
MSG_UNKNOWN_ROUND = "Round {round} has no open reservation in the local ledger ({state})."
MSG_LOCKED = "Another agent (pid {pid}) holds the ledger in {state_dir}: one agent per state directory."
MSG_CORRUPT = "Partner ledger {path}: entry #{seq}: {reason}"
MSG_USING_SHOWN = (
    "data {data_id}: the operator set no local budget (--budget/--delta); using the smallest budget shown for it: "
    "epsilon {epsilon:g} (by {shown_by}) at delta {delta:g}"
)


class LedgerError(Exception):
    """A domain error of the partner ledger: a stable `code`, a message, the facts in `details`."""

    code = "invalid_ledger_input"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class LocalBudgetExceeded(LedgerError):
    """This round would take the data source over its local budget; nothing was written."""

    code = "local_budget_exceeded"

    def __init__(self, *, data_id: str, round: RoundKey, spent: float, requested: float, would_spend: float, budget: Budget) -> None:  # noqa: A002
        super().__init__(
            MSG_BUDGET_EXCEEDED.format(
                data_id=data_id, round=round, spent=spent, requested=requested, would_spend=would_spend,
                budget=budget.epsilon, delta=budget.delta,
            ),
            data_id=data_id, round=round.to_json(), spent=spent, requested=requested, would_spend=would_spend,
            budget=budget.epsilon, delta=budget.delta, budget_source=budget.source,
        )
        self.spent, self.requested, self.would_spend, self.budget = spent, requested, would_spend, budget.epsilon


class LocalBudgetUnset(LedgerError):
    code = "local_budget_unset"


class RoundAlreadyReserved(LedgerError):
    code = "round_already_reserved"

    def __init__(self, reservation: Reservation) -> None:
        super().__init__(
            MSG_ALREADY_RESERVED.format(round=reservation.key, state=reservation.state, seq=reservation.seq),
            round=reservation.key.to_json(), state=reservation.state, seq=reservation.seq,
        )
        self.reservation = reservation


class ReleaseRefused(LedgerError):
    code = "release_refused"


class UnknownRound(LedgerError):
    code = "unknown_round"


class LedgerLocked(LedgerError):
    code = "ledger_locked"


class LedgerCorrupt(LedgerError):
    """The first bad entry of the file: `seq` is its 1-based line number."""

    code = "ledger_corrupt"

    def __init__(self, path: Path | str, seq: int, reason: str) -> None:
        super().__init__(MSG_CORRUPT.format(path=path, seq=seq, reason=reason), path=str(path), seq=seq, reason=reason)
        self.seq, self.reason = seq, reason


class _Invalid(Exception):
    """An entry breaks a rule; the caller turns it into LedgerCorrupt or LedgerError."""


class _Overspend(_Invalid):
    def __init__(self, spent: float, would_spend: float, budget: Budget) -> None:
        super().__init__(f"RESERVE overspends: epsilon {would_spend!r} exceeds the local budget {budget.epsilon!r}")
        self.spent, self.would_spend, self.budget = spent, would_spend, budget


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundKey:
    """A round as the partner knows it: which coordinator, which of its rounds, which dataset."""

    coordinator: str
    round: int
    dataset: str

    def __post_init__(self) -> None:
        for name in ("coordinator", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
                raise LedgerError(f"a round key's {name} must be a non-empty string, got {value!r}")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round <= 0:
            raise LedgerError(f"a round key's round must be a positive integer, got {self.round!r}")

    def to_json(self) -> dict:
        return {"coordinator": self.coordinator, "round": self.round, "dataset": self.dataset}

    @classmethod
    def from_json(cls, data: Any) -> RoundKey:
        if not isinstance(data, Mapping) or set(data) != _ROUND_FIELDS:
            raise LedgerError(f"a round must be an object with exactly {sorted(_ROUND_FIELDS)}")
        return cls(coordinator=data["coordinator"], round=data["round"], dataset=data["dataset"])

    def __str__(self) -> str:
        return f"{self.round} of dataset {self.dataset} at {self.coordinator}"


@dataclass(frozen=True)
class Budget:
    """The local budget in force for a data source."""

    epsilon: float
    delta: float
    accountant: str = "rdp"
    source: str = OPERATOR  # "operator" (--budget) or "shown" (smallest a coordinator showed)
    shown_by: str | None = None  # "coordinator dataset" of the smallest shown epsilon


@dataclass(frozen=True)
class Reservation:
    key: RoundKey
    data_id: str
    seq: int  # the RESERVE entry
    entry_hash: str
    event: dict
    ticket_hash: str | None
    fingerprint: dict
    state: str = "reserved"  # "reserved" | "committed" | "released"


@dataclass
class _DataState:
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


def default_data_id(path: str | os.PathLike) -> str:
    """The data source's default id: its absolute path, symlinks resolved (one file, one budget)."""
    return str(Path(path).expanduser().resolve())


_fingerprints: dict[tuple, dict] = {}


def data_fingerprint(path: str | os.PathLike) -> dict:
    """SHA-256 of the file's bytes, its size and its record count (CSV rows after the header).

    Cached per process by (inode, size, mtime): the agent fingerprints its file every round.
    """
    p = Path(path)
    st = p.stat()
    ident = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if ident in _fingerprints:
        return dict(_fingerprints[ident])
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    with p.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        rows = sum(1 for row in csv.reader(fh) if any(cell.strip() for cell in row))
    out = {"sha256": digest.hexdigest(), "records": max(rows - 1, 0), "bytes": st.st_size}
    _fingerprints[ident] = out
    return dict(out)


def compute_entry_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of the domain tag and the canonical JSON of every field but entry_hash."""
    doc = {k: v for k, v in document.items() if k != "entry_hash"}
    return hashlib.sha256(HASH_DOMAIN + chain.canonical_bytes(doc)).hexdigest()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TEXT


def _check_budget_numbers(epsilon: Any, delta: Any) -> tuple[float, float]:
    eps, dlt = _number(epsilon), _number(delta)
    if eps is None or eps <= 0:
        raise _Invalid(f"an epsilon budget must be a positive finite number, got {epsilon!r}")
    if dlt is None or not 0.0 < dlt < 1.0:
        raise _Invalid(f"delta must be in (0, 1), got {delta!r}")
    return chain.clean_float(eps), chain.clean_float(dlt)


# --- the chain: one replay for the writer, the agent's start and the CLI's --verify ----------


class _Chain:
    def __init__(self) -> None:
        self.seq = 0
        self.head = GENESIS_HASH
        self.data: dict[str, _DataState] = {}
        self.rounds: dict[RoundKey, Reservation] = {}
        self._event_keys: set[str] = set()

    def state(self, data_id: str) -> _DataState:
        st = self.data.get(data_id)
        return st if st is not None else _DataState(cum=acc.zero_rdp())

    def event_key(self, event: Any) -> str:
        """Canonical JSON of an allow-listed event (stored events must already be canonical)."""
        if isinstance(event, dp_event.DpEvent):
            try:
                return dp_events.event_key(event)
            except (dp_events.InvalidDpEvent, ValueError, TypeError) as e:
                raise _Invalid(f"event refused: {e}") from None
        if not isinstance(event, Mapping):
            raise _Invalid("event must be a DP-event object")
        try:
            text = dp_events.canonical_json(event)
            if text in self._event_keys:
                return text
            key = dp_events.event_key(event)
        except (dp_events.InvalidDpEvent, ValueError, TypeError) as e:
            raise _Invalid(f"event refused: {e}") from None
        if key != text:
            raise _Invalid("event is not in canonical form")
        self._event_keys.add(key)
        return key

    def transition(
        self, kind: str, data_id: Any, rnd: Any, event: Any, payload: Any
    ) -> tuple[_DataState, Reservation | None, dict]:
        """The data source's state after this entry, the round's new record, the derived fields.

        Pure: nothing changes until `apply`. Raises _Invalid (or _Overspend) on any breach.
        """
        if kind not in KINDS:
            raise _Invalid(f"unknown kind {kind!r}")
        if not _text(data_id):
            raise _Invalid("data_id must be a non-empty string")
        if not isinstance(payload, Mapping):
            raise _Invalid("payload must be an object")
        old = self.state(data_id)
        new = dataclasses.replace(old)
        res: Reservation | None = None
        key: RoundKey | None = None
        if kind in (BUDGET, SHOWN):
            if rnd is not None or event is not None:
                raise _Invalid(f"a {kind} names no round and no event")
        else:
            try:
                key = RoundKey.from_json(rnd)
            except LedgerError as e:
                raise _Invalid(str(e)) from None
            ekey = self.event_key(event)

        if kind == BUDGET:
            if set(payload) != {"epsilon", "delta", "accountant"}:
                raise _Invalid("a BUDGET's payload is {epsilon, delta, accountant}")
            eps, dlt = _check_budget_numbers(payload["epsilon"], payload["delta"])
            if payload["accountant"] not in acc.ACCOUNTANTS:
                raise _Invalid(f"unknown accountant {payload['accountant']!r}")
            new.operator = Budget(eps, dlt, payload["accountant"], OPERATOR)
        elif kind == SHOWN:
            if set(payload) != {"coordinator", "dataset", "epsilon", "delta"}:
                raise _Invalid("a SHOWN's payload is {coordinator, dataset, epsilon, delta}")
            if not _text(payload["coordinator"]) or not _text(payload["dataset"]):
                raise _Invalid("a SHOWN names its coordinator and dataset")
            eps, dlt = _check_budget_numbers(payload["epsilon"], payload["delta"])
            ident = (payload["coordinator"], payload["dataset"], eps, dlt)
            if ident in old.shown_seen:
                raise _Invalid("this budget was already recorded as shown")
            new.shown_seen = old.shown_seen | {ident}
            if old.shown_min_eps is None or eps < old.shown_min_eps:
                new.shown_min_eps, new.shown_min_eps_by = eps, f"{payload['coordinator']} dataset {payload['dataset']}"
            if old.shown_min_delta is None or dlt < old.shown_min_delta:
                new.shown_min_delta = dlt
        elif kind == RESERVE:
            if key in self.rounds:
                raise _Invalid(f"round {key} is reserved a second time")
            if set(payload) != {"ticket_hash", "fingerprint", "data_path"}:
                raise _Invalid("a RESERVE's payload is {ticket_hash, fingerprint, data_path}")
            ticket = payload["ticket_hash"]
            if ticket is not None and not _text(ticket):
                raise _Invalid("ticket_hash must be a non-empty string or null")
            fp = payload["fingerprint"]
            if (
                not isinstance(fp, Mapping)
                or set(fp) != {"sha256", "records", "bytes"}
                or not isinstance(fp["sha256"], str)
                or not _HEX64.fullmatch(fp["sha256"])
                or any(isinstance(fp[k], bool) or not isinstance(fp[k], int) or fp[k] < 0 for k in ("records", "bytes"))
            ):
                raise _Invalid("fingerprint must be {sha256: 64 hex, records: int >= 0, bytes: int >= 0}")
            if payload["data_path"] is not None and not _text(payload["data_path"]):
                raise _Invalid("data_path must be a non-empty string or null")
            if old.budget() is None:
                raise _Invalid("a RESERVE with no local budget in force")
            new.cum = acc.rdp_add(old.cum, self._vector(ekey))
            new.live = (*old.live, ekey)
            new.fingerprint = dict(fp)
            res = Reservation(key, data_id, self.seq + 1, "", json.loads(ekey), ticket, dict(fp), "reserved")
        else:  # COMMIT, RELEASE
            prior = self.rounds.get(key)
            if prior is None or prior.state != "reserved":
                state = "never reserved" if prior is None else prior.state
                if kind == RELEASE and prior is not None and prior.state == "committed":
                    raise _Invalid(f"a RELEASE of round {key}, which is committed: its update may have left")
                raise _Invalid(f"a {kind} of round {key}, which is {state}")
            if prior.data_id != data_id:
                raise _Invalid(f"a {kind} of round {key} on data {data_id!r}; it was reserved on {prior.data_id!r}")
            if dp_events.canonical_json(prior.event) != ekey:
                raise _Invalid(f"a {kind} of round {key} names a different event from its RESERVE")
            if kind == COMMIT:
                if payload:
                    raise _Invalid("a COMMIT's payload is {}")
                res = dataclasses.replace(prior, state="committed")
            else:
                if set(payload) != {"reason"} or not _text(payload["reason"]) or not payload["reason"].strip():
                    raise _Invalid("a RELEASE's payload is {reason: non-empty text}")
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
                raise _Invalid(f"cannot compose: {e}") from None
            new.spent_at = (budget.accountant, budget.delta)
        if kind == RESERVE and new.spent > budget.epsilon * (1 + chain.RDP_RTOL) + chain.ABS_TOL:
            raise _Overspend(old.spent, new.spent, budget)
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
            raise _Invalid(f"event refused: {e}") from None

    def feed(self, entry: Any) -> None:
        """Check one stored entry against the chain so far, then apply it."""
        expected = self.seq + 1
        if not isinstance(entry, Mapping):
            raise _Invalid("entry is not a JSON object")
        want = set(ENTRY_FIELDS) | {"entry_hash"}
        if set(entry) != want:
            raise _Invalid(f"fields differ from the format: unexpected {sorted(set(entry) - want)}, missing {sorted(want - set(entry))}")
        if entry["seq"] != expected or isinstance(entry["seq"], bool):
            raise _Invalid(f"out of sequence: found seq {entry['seq']!r} on line {expected}")
        for name in ("entry_hash", "prev_hash"):
            if not isinstance(entry[name], str) or not _HEX64.fullmatch(entry[name]):
                raise _Invalid(f"{name} is not 64 lowercase hex digits")
        if entry["prev_hash"] != self.head:
            raise _Invalid(f"prev_hash {entry['prev_hash'][:12]}... does not match the previous entry's hash {self.head[:12]}...")
        try:
            computed = compute_entry_hash(entry)
        except (TypeError, ValueError) as e:
            raise _Invalid(f"entry cannot be serialised canonically: {e}") from None
        if computed != entry["entry_hash"]:
            raise _Invalid(f"entry_hash mismatch: the entry was altered (stored {entry['entry_hash'][:12]}..., computed {computed[:12]}...)")
        if entry["v"] != FORMAT_VERSION:
            raise _Invalid(f"unknown format version {entry['v']!r}")
        try:
            datetime.fromisoformat(entry["created_at"])
        except (TypeError, ValueError):
            raise _Invalid("created_at must be an ISO-8601 timestamp") from None
        new, res, derived = self.transition(entry["kind"], entry["data_id"], entry["round"], entry["event"], entry["payload"])
        for name, value in derived.items():
            stored = entry[name]
            if name == "epsilon_spent_after":
                ok = _number(stored) is not None and chain.epsilon_matches(float(stored), value, entry["accountant"] or "rdp")
            else:
                ok = stored == value and type(stored) is type(value)
            if not ok:
                raise _Invalid(f"{name} {stored!r} differs from the recomputed {value!r}")
        self.apply(entry, new, res)

    def apply(self, entry: Mapping[str, Any], new: _DataState, res: Reservation | None) -> None:
        self.data[entry["data_id"]] = new
        if res is not None:
            if entry["kind"] == RESERVE:
                res = dataclasses.replace(res, seq=entry["seq"], entry_hash=entry["entry_hash"])
            self.rounds[res.key] = res
        self.seq, self.head = entry["seq"], entry["entry_hash"]


# --- reading the file -----------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _split(raw: bytes) -> tuple[list[bytes], int]:
    """Complete lines, and the length of a final partial line (no newline) to ignore."""
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    return lines, len(torn)


def _parse_line(line: bytes) -> Any:
    return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)


def _entries(path: Path, lines: list[bytes]) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(lines, start=1):
        try:
            yield n, _parse_line(line)
        except (UnicodeDecodeError, ValueError) as e:
            raise LedgerCorrupt(path, n, f"not a JSON line ({e})") from None


def _replay(path: Path, lines: list[bytes]) -> tuple[_Chain, list[dict]]:
    ch, entries = _Chain(), []
    for n, entry in _entries(path, lines):
        try:
            ch.feed(entry)
        except _Invalid as e:
            raise LedgerCorrupt(path, n, str(e)) from None
        entries.append(entry)
    return ch, entries


# --- the writer -----------------------------------------------------------------------------


class PartnerLedger:
    """The agent's ledger, open for appending; holds the state directory's lock until closed."""

    def __init__(self, state_dir: Path, lock_fd: int, fd: int, ch: _Chain, size: int) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LEDGER_FILE
        self._lock_fd, self._fd, self._chain, self._size = lock_fd, fd, ch, size
        self._logged_shown: dict[str, Budget] = {}

    @classmethod
    def open(cls, state_dir: str | os.PathLike) -> PartnerLedger:
        """Lock the state directory, replay and verify its ledger, cut a torn final line."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(lock_fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(lock_fd)
            raise LedgerLocked(MSG_LOCKED.format(pid=holder, state_dir=state_dir), state_dir=str(state_dir), pid=holder) from None
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            path = state_dir / LEDGER_FILE
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                raw = _read_all(fd)
                lines, torn = _split(raw)
                ch, _ = _replay(path, lines)
                size = len(raw)
                if torn:
                    logger.warning("partner ledger %s: ignoring a partial last line (%d bytes) left by a crash mid-append", path, torn)
                    size -= torn
                    os.ftruncate(fd, size)
                os.fsync(fd)
                _fsync_dir(state_dir)  # the file's directory entry is durable before any RESERVE
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(state_dir, lock_fd, fd, ch, size)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> PartnerLedger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------

    def reservation_for(self, key: RoundKey) -> Reservation | None:
        """The round's record (reserved, committed or released), if the ledger has one."""
        return self._chain.rounds.get(key)

    def budget_for(self, data_id: str) -> Budget | None:
        st = self._chain.data.get(data_id)
        return st.budget() if st else None

    def spent(self, data_id: str) -> float:
        st = self._chain.data.get(data_id)
        return st.spent if st else 0.0

    def fingerprint_for(self, data_id: str) -> dict | None:
        """The fingerprint recorded by the data source's last RESERVE."""
        st = self._chain.data.get(data_id)
        return dict(st.fingerprint) if st and st.fingerprint else None

    @property
    def head_hash(self) -> str:
        return self._chain.head

    @property
    def entries(self) -> int:
        return self._chain.seq

    # -- writes ------------------------------------------------------------------------------

    def set_budget(self, data_id: str, *, epsilon: float, delta: float, accountant: str = "rdp") -> bool:
        """The operator's budget for a data source; written only if it changes. True if written."""
        if accountant not in acc.ACCOUNTANTS:
            raise LedgerError(f"accountant must be one of {acc.ACCOUNTANTS}, got {accountant!r}")
        eps, dlt = self._budget_numbers(epsilon, delta)
        current = self._state(data_id).operator
        if current is not None and (current.epsilon, current.delta, current.accountant) == (eps, dlt, accountant):
            return False
        self._append(BUDGET, data_id, None, None, {"epsilon": eps, "delta": dlt, "accountant": accountant})
        logger.info("data %s: local budget set by the operator: epsilon %g at delta %g (%s)", data_id, eps, dlt, accountant)
        return True

    def record_shown_budget(self, data_id: str, *, coordinator: str, dataset: str, epsilon: float, delta: float) -> bool:
        """A budget a coordinator showed for a dataset on this data; written once per distinct one."""
        if not _text(coordinator) or not _text(dataset):
            raise LedgerError("a shown budget names its coordinator and dataset")
        eps, dlt = self._budget_numbers(epsilon, delta)
        if (coordinator, dataset, eps, dlt) in self._state(data_id).shown_seen:
            return False
        self._append(SHOWN, data_id, None, None, {"coordinator": coordinator, "dataset": dataset, "epsilon": eps, "delta": dlt})
        return True

    def reserve(
        self,
        key: RoundKey,
        *,
        data_id: str,
        event: dp_event.DpEvent | Mapping,
        ticket_hash: str | None,
        data_path: str | os.PathLike | None = None,
        fingerprint: Mapping | None = None,
    ) -> Reservation:
        """RESERVE the round's event on the data source, durably, or raise; train only after this."""
        prior = self._chain.rounds.get(key)
        if prior is not None:
            raise RoundAlreadyReserved(prior)
        if fingerprint is None:
            if data_path is None:
                raise LedgerError("reserve needs the data file (data_path) or its fingerprint")
            fingerprint = data_fingerprint(data_path)
        try:
            ekey = self._chain.event_key(event)
        except _Invalid as e:
            raise LedgerError(str(e)) from None
        st = self._state(data_id)
        budget = st.budget()
        if budget is None:
            raise LocalBudgetUnset(MSG_BUDGET_UNSET.format(data_id=data_id, round=key), data_id=data_id, round=key.to_json())
        if budget.source == SHOWN_SOURCE:
            logger.info(MSG_USING_SHOWN.format(data_id=data_id, epsilon=budget.epsilon, shown_by=budget.shown_by, delta=budget.delta))
        if st.fingerprint is not None and st.fingerprint["sha256"] != fingerprint["sha256"]:
            logger.warning(
                "data %s changed since its last round (records %s -> %s, sha256 %s... -> %s...); its budget carries on",
                data_id, st.fingerprint["records"], fingerprint["records"], st.fingerprint["sha256"][:12], fingerprint["sha256"][:12],
            )
        payload = {
            "ticket_hash": ticket_hash,
            "fingerprint": dict(fingerprint),
            "data_path": str(data_path) if data_path is not None else None,
        }
        try:
            entry = self._append(RESERVE, data_id, key.to_json(), json.loads(ekey), payload)
        except _Overspend as e:
            requested = chain.spent_epsilon(
                accountant=budget.accountant, delta=budget.delta, cum=self._chain._vector(ekey), live_events=[ekey]
            )
            raise LocalBudgetExceeded(
                data_id=data_id, round=key, spent=e.spent, requested=requested, would_spend=e.would_spend, budget=budget
            ) from None
        logger.info(
            "round %s: reserved on data %s; epsilon spent %.4f of %.4f (delta %g, %s budget)",
            key, data_id, entry["epsilon_spent_after"], budget.epsilon, budget.delta, budget.source,
        )
        return self._chain.rounds[key]

    def commit(self, key: RoundKey) -> Reservation:
        """Write-ahead of the masked input: from now on the round's update may have left."""
        res = self._open_round(key, allow_committed=True)
        if res.state == "committed":
            return res
        self._append(COMMIT, res.data_id, key.to_json(), res.event, {})
        return self._chain.rounds[key]

    def release(self, key: RoundKey, *, reason: str) -> Reservation:
        """Give the round's budget back: only while no update has left (no COMMIT)."""
        if not isinstance(reason, str) or not reason.strip() or len(reason) > _MAX_TEXT:
            raise LedgerError("say why the reservation is released")
        res = self._open_round(key, allow_committed=True)
        if res.state == "committed":
            raise ReleaseRefused(MSG_RELEASE_REFUSED.format(round=key), round=key.to_json())
        self._append(RELEASE, res.data_id, key.to_json(), res.event, {"reason": reason})
        logger.info("round %s: reservation released on data %s (%s)", key, res.data_id, reason)
        return self._chain.rounds[key]

    # -- internals ---------------------------------------------------------------------------

    def _state(self, data_id: str) -> _DataState:
        if not _text(data_id):
            raise LedgerError(f"data_id must be a non-empty string, got {data_id!r}")
        return self._chain.state(data_id)

    @staticmethod
    def _budget_numbers(epsilon: Any, delta: Any) -> tuple[float, float]:
        try:
            return _check_budget_numbers(epsilon, delta)
        except _Invalid as e:
            raise LedgerError(str(e)) from None

    def _open_round(self, key: RoundKey, *, allow_committed: bool) -> Reservation:
        res = self._chain.rounds.get(key)
        if res is None or res.state == "released" or (res.state == "committed" and not allow_committed):
            state = "never reserved" if res is None else res.state
            raise UnknownRound(MSG_UNKNOWN_ROUND.format(round=key, state=state), round=key.to_json(), state=state)
        return res

    def _append(self, kind: str, data_id: str, rnd: dict | None, event: dict | None, payload: dict) -> dict:
        if self._fd < 0:
            raise LedgerError("the partner ledger is closed")
        self._state(data_id)
        try:
            new, res, derived = self._chain.transition(kind, data_id, rnd, event, payload)
        except _Overspend:
            raise
        except _Invalid as e:
            raise LedgerError(str(e)) from None
        entry = {
            "v": FORMAT_VERSION,
            "seq": self._chain.seq + 1,
            "kind": kind,
            "data_id": data_id,
            "round": rnd,
            "event": event,
            "payload": payload,
            **derived,
            "created_at": datetime.now(UTC).isoformat(),
            "prev_hash": self._chain.head,
        }
        entry["entry_hash"] = compute_entry_hash(entry)
        line = chain.canonical_bytes(entry) + b"\n"
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError:
            # A partial line must not stay in front of the next append: cut back (best effort;
            # if this fails too, the next open sees a torn final line or a corrupt one).
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += len(line)
        self._chain.apply(entry, new, res)
        return entry


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the read-only view (CLI) ---------------------------------------------------------------


@dataclass
class LedgerView:
    path: Path
    entries: list[dict] = field(default_factory=list)
    torn_bytes: int = 0
    verified: bool = False
    error: LedgerCorrupt | None = None

    @property
    def head_hash(self) -> str:
        return self.entries[-1]["entry_hash"] if self.entries else GENESIS_HASH

    def by_data(self) -> dict[str, dict]:
        """Per data source, the stored figures of its last entry, its rounds and fingerprints."""
        out: dict[str, dict] = {}
        for e in self.entries:
            d = out.setdefault(e.get("data_id"), {"entries": [], "fingerprints": [], "rounds": {}})
            d["entries"].append(e)
            kind, rnd = e.get("kind"), e.get("round")
            if kind == RESERVE:
                fp = (e.get("payload") or {}).get("fingerprint")
                if fp and (not d["fingerprints"] or d["fingerprints"][-1] != fp):
                    d["fingerprints"].append(fp)
            if kind in (RESERVE, COMMIT, RELEASE) and isinstance(rnd, Mapping):
                d["rounds"][json.dumps(rnd, sort_keys=True)] = {RESERVE: "reserved", COMMIT: "committed", RELEASE: "released"}[kind]
        summary = {}
        for data_id, d in out.items():
            last = d["entries"][-1]
            budget, spent = last.get("epsilon_budget"), last.get("epsilon_spent_after")
            states = list(d["rounds"].values())
            summary[data_id] = {
                "budget": budget,
                "delta": last.get("delta"),
                "accountant": last.get("accountant"),
                "budget_source": last.get("budget_source"),
                "spent": spent,
                "remaining": (budget - spent) if isinstance(budget, (int, float)) and isinstance(spent, (int, float)) else None,
                "reserved": states.count("reserved"),
                "committed": states.count("committed"),
                "released": states.count("released"),
                "fingerprints": d["fingerprints"],
                "entries": d["entries"],
            }
        return summary

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "ok": self.error is None,
            "verified": self.verified,
            "entries": len(self.entries),
            "head_hash": self.head_hash,
            "torn_tail_bytes": self.torn_bytes,
            "error": None if self.error is None else {"code": self.error.code, "seq": self.error.seq, "reason": self.error.reason, "message": self.error.message},
            "data": self.by_data(),
        }


def read_ledger(state_dir: str | os.PathLike, *, verify: bool = False) -> LedgerView:
    """Read a state directory's ledger without locking or writing (a running agent may hold it).

    verify=False parses the lines and reports the stored figures; verify=True replays the
    chain, the two-phase protocol and the composition, and sets `error` at the first bad
    entry (the entries before it are kept). Raises FileNotFoundError if there is no ledger.
    """
    path = Path(state_dir) / LEDGER_FILE
    raw = path.read_bytes()
    lines, torn = _split(raw)
    view = LedgerView(path=path, torn_bytes=torn, verified=verify)
    try:
        if verify:
            ch = _Chain()
            for n, entry in _entries(path, lines):
                try:
                    ch.feed(entry)
                except _Invalid as e:
                    raise LedgerCorrupt(path, n, str(e)) from None
                view.entries.append(entry)
        else:
            for n, entry in _entries(path, lines):
                if not isinstance(entry, Mapping):
                    raise LedgerCorrupt(path, n, "entry is not a JSON object")
                view.entries.append(entry)
    except LedgerCorrupt as e:
        view.error = e
    return view
