"""Secure aggregation for fedgov (Bonawitz et al., CCS 2017), with dropout recovery.

Pure Python + numpy + cryptography: partners run the client side in their agent, the
coordinator runs the server side in Celery tasks. Nothing here imports Django.

Public API:
    RoundConfig, default_threshold, max_body_bytes   -- what both sides agree on; size caps
    SecAggClient                                     -- partner state machine
    SecAggServer, AggregateResult                    -- coordinator state machine
    Contribution                                     -- a message's share of the state, storable apart
    SecAggError and subclasses (stable ``code``)     -- every refusal
    simulation.run_round, simulation.make_identities -- a whole round in one process
"""

from .client import SecAggClient
from .errors import (
    BadCiphertext,
    BadLength,
    BadSignature,
    DuplicateSender,
    InconsistentView,
    MalformedMessage,
    MessageTooLarge,
    NotAMember,
    ReconstructionFailed,
    ReplayedMessage,
    RoundAborted,
    SecAggError,
    TooFewSurvivors,
    UnmaskConflict,
    WrongPhase,
    WrongRecipient,
    WrongRound,
    WrongSender,
)
from .messages import (
    ADVERTISE_KEYS,
    KEY_LIST,
    MASKED_INPUT,
    SHARE_KEYS,
    SHARE_RELAY,
    UNMASK_REQUEST,
    UNMASK_RESPONSE,
    RoundConfig,
    default_threshold,
    max_body_bytes,
)
from .server import AggregateResult, SecAggServer
from .server_state import Contribution

__all__ = [
    "ADVERTISE_KEYS",
    "KEY_LIST",
    "MASKED_INPUT",
    "SHARE_KEYS",
    "SHARE_RELAY",
    "UNMASK_REQUEST",
    "UNMASK_RESPONSE",
    "AggregateResult",
    "BadCiphertext",
    "BadLength",
    "BadSignature",
    "Contribution",
    "DuplicateSender",
    "InconsistentView",
    "MalformedMessage",
    "MessageTooLarge",
    "NotAMember",
    "WrongSender",
    "ReconstructionFailed",
    "ReplayedMessage",
    "RoundAborted",
    "RoundConfig",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "TooFewSurvivors",
    "UnmaskConflict",
    "WrongPhase",
    "WrongRecipient",
    "WrongRound",
    "default_threshold",
    "max_body_bytes",
]
