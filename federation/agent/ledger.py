"""The partner's own privacy ledger: append-only, hash-chained, one budget per data source.

The coordinator keeps a ledger per dataset; a partner cannot rely on it alone: a careless or
compromised coordinator could register the same records as two datasets, or show a budget
and charge another. So the agent keeps its own (docs/PARTNER-LEDGER.md), keyed by the data
source it trains on (`--data-id`, by default the data file's absolute path), and refuses a
round that would take that source over its operator's budget, whatever the coordinator says.

* Composition is dp-accounting's, through the project's pure modules `accounting.accountant`
  (DP-event JSON, RDP curves, the epsilon conversion) and `accounting.chain` (canonical JSON,
  spent epsilon): the same numbers as the coordinator's ledger. Each data source keeps a
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

This module is the writer (file storage, locking, the appends); the entries' format is
`ledger_format`, their replay `ledger_chain`, the errors `ledger_errors`, the read-only view
for the CLI `ledger_view`. No Django (ARCHITECTURE.md, Layers): numpy, dp-accounting and the
standard library.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dp_accounting import dp_event

from accounting import accountant as acc
from accounting import chain

from .ledger_chain import Chain, DataState, replay
from .ledger_errors import (
    MSG_BUDGET_UNSET,
    MSG_LOCKED,
    MSG_RELEASE_REFUSED,
    MSG_UNKNOWN_ROUND,
    MSG_USING_SHOWN,
    InvalidEntry,
    LedgerError,
    LedgerLocked,
    LocalBudgetExceeded,
    LocalBudgetUnset,
    Overspend,
    ReleaseRefused,
    RoundAlreadyReserved,
    UnknownRound,
)
from .ledger_format import (
    BUDGET,
    COMMIT,
    FORMAT_VERSION,
    LEDGER_FILE,
    LOCK_FILE,
    MAX_TEXT,
    RELEASE,
    RESERVE,
    SHOWN,
    SHOWN_SOURCE,
    Budget,
    Reservation,
    RoundKey,
    check_budget_numbers,
    compute_entry_hash,
    data_fingerprint,
    is_text,
    split_lines,
)

logger = logging.getLogger("fedgov.agent.ledger")

__all__ = ["PartnerLedger"]


class PartnerLedger:
    """The agent's ledger, open for appending; holds the state directory's lock until closed."""

    def __init__(self, state_dir: Path, lock_fd: int, fd: int, ch: Chain, size: int) -> None:
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
                lines, torn = split_lines(raw)
                ch, _ = replay(path, lines)
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
        if not is_text(coordinator) or not is_text(dataset):
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
        except InvalidEntry as e:
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
        except Overspend as e:
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
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_TEXT:
            raise LedgerError("say why the reservation is released")
        res = self._open_round(key, allow_committed=True)
        if res.state == "committed":
            raise ReleaseRefused(MSG_RELEASE_REFUSED.format(round=key), round=key.to_json())
        self._append(RELEASE, res.data_id, key.to_json(), res.event, {"reason": reason})
        logger.info("round %s: reservation released on data %s (%s)", key, res.data_id, reason)
        return self._chain.rounds[key]

    # -- internals ---------------------------------------------------------------------------

    def _state(self, data_id: str) -> DataState:
        if not is_text(data_id):
            raise LedgerError(f"data_id must be a non-empty string, got {data_id!r}")
        return self._chain.state(data_id)

    @staticmethod
    def _budget_numbers(epsilon: Any, delta: Any) -> tuple[float, float]:
        try:
            return check_budget_numbers(epsilon, delta)
        except InvalidEntry as e:
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
        except Overspend:
            raise
        except InvalidEntry as e:
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
