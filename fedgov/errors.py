"""Domain errors that carry their facts.

Every error a service raises is an `ApplicationError` with a stable `code`; the API turns it
into a 4xx body `{"code", "message", "details"}` and the web UI shows its message. Messages
are built from constants so tests can assert on them.
"""

from typing import Any


class ApplicationError(Exception):
    code = "application_error"
    http_status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class NotFound(ApplicationError):
    code = "not_found"
    http_status = 404


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    http_status = 403


class InvalidState(ApplicationError):
    """The object is not in a state that allows this action (e.g. signing a draft twice)."""

    code = "invalid_state"
    http_status = 409


class ValidationFailed(ApplicationError):
    code = "validation_failed"
    http_status = 400


class GovernanceCheckFailed(ApplicationError):
    code = "governance_check_failed"
    http_status = 409
