"""The round ticket's signed format: its fields, the domain its signature covers, and its hash
(docs/TRUST-FORMATS.md, "Ticket"; ARCHITECTURE.md, Trust 1).

One home for the bytes three parties must agree on: the coordinator signs tickets with it
(through federation/agent/trust.py), the partner's agent verifies them, and the auditor's
offline verifier (accounting/terms_check.py) checks the tickets an audit bundle carries.
Pure: the ledger's canonical JSON and hashlib, no Django.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .dp_events import canonical_json

TICKET_VERSION = 1
TICKET_DOMAIN = b"fedgov.ticket.v1\n"

# docs/TRUST-FORMATS.md's ticket fields, and what the partner also needs to run the round:
# the dataset's delta and accountant (its per-round epsilon check), the training
# hyper-parameters, its secure-aggregation weight and quantisation, and the dataset's budget
# (which its own ledger records as shown, docs/PARTNER-LEDGER.md).
TICKET_FIELDS = frozenset(
    {
        "round", "dataset", "event", "q", "z", "K", "C", "eval_noise", "eval_count", "records", "model_spec",
        "start_model_sha256", "agreement_id", "agreement_version", "terms_hash", "reserve_entry_hash",
        "v", "round_number", "plan", "secagg_round_id", "organisation", "model_version", "delta", "accountant",
        "learning_rate", "momentum", "weight", "quant", "epsilon_budget", "key_id", "issued_at",
    }
)  # fmt: skip


def unsigned(document: Mapping[str, Any]) -> dict:
    """The document without its signature: what is hashed and signed."""
    return {k: v for k, v in document.items() if k != "signature"}


def ticket_message(ticket: Mapping[str, Any]) -> bytes:
    """The bytes the coordinator's ledger key signs for a ticket."""
    return TICKET_DOMAIN + canonical_json(unsigned(ticket)).encode("utf-8")


def ticket_hash(ticket: Mapping[str, Any]) -> str:
    """SHA-256 of the ticket's canonical JSON without its signature: what COMMITs and receipts name."""
    return hashlib.sha256(canonical_json(unsigned(ticket)).encode("utf-8")).hexdigest()


def dp_limit_problems(ticket: Mapping[str, Any], terms: Mapping[str, Any]) -> list[str]:
    """What of the ticket's noise multiplier, clip norm and delta breaks the agreement's signed
    floor and ceilings (`terms`: min_noise_multiplier, max_clip_norm, max_delta); the partner's
    agent refuses such a round and the auditor's verifier fails it, with the same words."""
    problems = []
    if ticket["z"] < terms["min_noise_multiplier"]:
        problems.append(f"noise multiplier z={ticket['z']} < floor {terms['min_noise_multiplier']}")
    if ticket["C"] > terms["max_clip_norm"]:
        problems.append(f"clip norm C={ticket['C']} > ceiling {terms['max_clip_norm']}")
    if ticket["delta"] > terms["max_delta"]:
        problems.append(f"delta {ticket['delta']} > ceiling {terms['max_delta']}")
    return problems
