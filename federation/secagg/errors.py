"""Errors of the secure-aggregation protocol.

Every refusal is a ``SecAggError`` subclass with a stable ``code`` (the HTTP layer maps it
to a 4xx body ``{"code": ..., "detail": ...}``) and the facts that explain it as
attributes. Messages are module constants so tests and the UI can rely on them.

A rejected message never changes the state of the object that rejected it: each
``receive_*``/client step validates everything first and mutates last, so one partner's
bad message cannot break the round for the others.
"""

from __future__ import annotations

MSG_MALFORMED = "The message is malformed."
MSG_TOO_LARGE = "The message is larger than this phase allows."
MSG_WRONG_ROUND = "The message belongs to another round."
MSG_WRONG_PHASE = "The message is out of turn for the current phase."
MSG_REPLAY = "The message was already received."
MSG_BAD_SIGNATURE = "A signature does not verify."
MSG_BAD_CIPHERTEXT = "A ciphertext does not verify."
MSG_NOT_A_MEMBER = "A party is not a member of this round at this phase."
MSG_WRONG_RECIPIENT = "The message is addressed to another party."
MSG_BAD_LENGTH = "The vector has the wrong length."
MSG_DUPLICATE_SENDER = "A sender appears more than once."
MSG_TOO_FEW_SURVIVORS = "Fewer parties than the threshold remain; the round is aborted."
MSG_UNMASK_CONFLICT = "Both the self-mask share and the masking-key share of one party were requested."
MSG_INCONSISTENT = "The message contradicts what this party already knows of the round."
MSG_RECONSTRUCTION_FAILED = "A secret could not be reconstructed from the shares."
MSG_ABORTED = "The round was aborted."


class SecAggError(Exception):
    """Base of every protocol refusal. ``code`` is stable; ``detail`` says which check failed."""

    code = "secagg_error"
    message = "Secure aggregation error."

    def __init__(self, detail: str = "", **facts: object) -> None:
        self.detail = detail
        self.facts = facts
        for key, value in facts.items():
            setattr(self, key, value)
        super().__init__(f"{self.message} {detail}".strip())

    def as_dict(self) -> dict:
        """JSON body for the HTTP layer."""
        return {"code": self.code, "message": self.message, "detail": self.detail}


class MalformedMessage(SecAggError):
    code = "malformed"
    message = MSG_MALFORMED


class MessageTooLarge(SecAggError):
    code = "too_large"
    message = MSG_TOO_LARGE


class WrongRound(SecAggError):
    code = "wrong_round"
    message = MSG_WRONG_ROUND


class WrongPhase(SecAggError):
    code = "wrong_phase"
    message = MSG_WRONG_PHASE


class ReplayedMessage(SecAggError):
    code = "replay"
    message = MSG_REPLAY


class BadSignature(SecAggError):
    code = "bad_signature"
    message = MSG_BAD_SIGNATURE


class BadCiphertext(SecAggError):
    code = "bad_ciphertext"
    message = MSG_BAD_CIPHERTEXT


class NotAMember(SecAggError):
    code = "not_a_member"
    message = MSG_NOT_A_MEMBER


class WrongSender(SecAggError):
    """The message names a sender other than the party that delivered it."""

    code = "wrong_sender"
    message = "the message's sender is not the party that sent it"


class WrongRecipient(SecAggError):
    code = "wrong_recipient"
    message = MSG_WRONG_RECIPIENT


class BadLength(SecAggError):
    code = "bad_length"
    message = MSG_BAD_LENGTH


class DuplicateSender(SecAggError):
    code = "duplicate_sender"
    message = MSG_DUPLICATE_SENDER


class TooFewSurvivors(SecAggError):
    code = "too_few_survivors"
    message = MSG_TOO_FEW_SURVIVORS


class UnmaskConflict(SecAggError):
    code = "unmask_conflict"
    message = MSG_UNMASK_CONFLICT


class InconsistentView(SecAggError):
    code = "inconsistent"
    message = MSG_INCONSISTENT


class ReconstructionFailed(SecAggError):
    code = "reconstruction_failed"
    message = MSG_RECONSTRUCTION_FAILED


class RoundAborted(SecAggError):
    code = "aborted"
    message = MSG_ABORTED
