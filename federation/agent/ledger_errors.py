"""The partner ledger's errors: a stable `code`, a message in words, the facts in `details`.

Part of the partner's own privacy ledger (federation/agent/ledger.py, docs/PARTNER-LEDGER.md).
No Django (ARCHITECTURE.md, Layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ledger_format import Budget, Reservation, RoundKey

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


class InvalidEntry(Exception):
    """An entry breaks a rule; the caller turns it into LedgerCorrupt or LedgerError."""


class Overspend(InvalidEntry):
    def __init__(self, spent: float, would_spend: float, budget: Budget) -> None:
        super().__init__(f"RESERVE overspends: epsilon {would_spend!r} exceeds the local budget {budget.epsilon!r}")
        self.spent, self.would_spend, self.budget = spent, would_spend, budget
