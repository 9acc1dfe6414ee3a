"""Domain errors of the accounting app (ARCHITECTURE.md, Conventions 4): each carries its facts, messages are
constants that tests assert on, and `code` is what the API returns."""

from __future__ import annotations

from typing import Any

from fedgov.errors import ApplicationError, InvalidState, ValidationFailed

MSG_BUDGET_EXCEEDED = (
    "Budget exceeded for dataset {dataset}: this round needs epsilon {requested:.4f}, "
    "only {remaining:.4f} of {budget:.4f} remains."
)
MSG_RELEASE_WITHOUT_PROOF = (
    "Refused to release the reservation of round {round}: no proof that no update was released; the budget stays spent."
)
MSG_RELEASE_ROUND_STATE = (
    "Refused to release the reservation of round {round}: the round is {status}; only a round that "
    "failed, was aborted, blocked or rejected can show that no update was released."
)
MSG_RELEASE_INPUT_RECEIVED = (
    "The coordinator received the masked input of dataset {dataset} in round {round}: its budget stays spent."
)
MSG_RELEASE_NO_REASON = "Say why the reservation of round {round} is released."
MSG_ALREADY_FINAL = "The reservation of round {round} on dataset {dataset} is already {state}."
MSG_NOTHING_RESERVED = "Round {round} has no open reservation to {action}."
MSG_RESERVED_AFTER_RELEASE = "Round {round} had its reservation on dataset {dataset} released; it cannot reserve again."
MSG_NO_PARTICIPANTS = "Round {round} has no participating dataset to reserve budget for."
MSG_BAD_BUDGET = "The epsilon budget must be a positive, finite number; got {value!r}."
MSG_BAD_EVENT = "Dataset {dataset}: the round's DP parameters do not describe an allowed DP event: {error}"


class BudgetExceeded(ApplicationError):
    """Reserving this round would take `dataset` over its budget; nothing was written."""

    code = "budget_exceeded"
    http_status = 409

    def __init__(self, dataset, requested: float, remaining: float, *, budget: float, spent: float, **details: Any) -> None:
        slug = getattr(dataset, "slug", str(dataset))
        super().__init__(
            MSG_BUDGET_EXCEEDED.format(dataset=slug, requested=requested, remaining=remaining, budget=budget),
            dataset=slug,
            requested=requested,
            remaining=remaining,
            budget=budget,
            spent=spent,
            **details,
        )
        self.dataset = dataset
        self.requested = requested
        self.remaining = remaining
        self.budget = budget
        self.spent = spent


class ReleaseRefused(InvalidState):
    """RELEASE without proof: when in doubt the budget stays spent (ARCHITECTURE.md, Ledger 2)."""

    code = "release_refused"


class LedgerStateError(InvalidState):
    """COMMIT/RELEASE/RESERVE that does not fit the reservation's current state."""

    code = "ledger_state"


class InvalidBudget(ValidationFailed):
    code = "invalid_budget"


MSG_RECEIPT_INVALID = "The receipt is refused: {error}"
MSG_RECEIPT_WRONG_ORGANISATION = "Dataset {dataset} belongs to another organisation than {organisation}."
MSG_RECEIPT_NO_DATASET = "The receipt names dataset {dataset}, which has no ledger."
MSG_RECEIPT_NO_RESERVE = (
    "Dataset {dataset} has no reservation for round {round}: nothing was charged for what the receipt says ran."
)
MSG_RECEIPT_RELEASED = "The reservation of round {round} on dataset {dataset} was released: no update may have left the partner."
MSG_RECEIPT_EVENT = "The receipt's event differs from the event charged to dataset {dataset} for round {round}."
MSG_RECEIPT_TICKET = (
    "The receipt names ticket {ticket}..., but round {round} on dataset {dataset} was committed with ticket {committed}..."
)
MSG_RECEIPT_CONFLICT = "Dataset {dataset} already holds a different receipt for round {round}."
MSG_BAD_TICKET_HASH = "Dataset {dataset}: a ticket hash is 64 lowercase hex digits; got {value!r}."


class ReceiptInvalid(ValidationFailed):
    """Malformed, or not signed by the organisation's enrolled agent key."""

    code = "receipt_invalid"


class ReceiptMismatch(InvalidState):
    """Well signed, but not what the ledger charged (no such reservation, another event or ticket)."""

    code = "receipt_mismatch"


class ReceiptConflict(InvalidState):
    """Another receipt is already stored for this round and dataset."""

    code = "receipt_conflict"
