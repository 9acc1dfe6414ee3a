"""Round tickets and receipts: the signed documents coordinator and partner agents exchange.

Pure (cryptography + the ledger's canonical JSON, no Django): the coordinator signs tickets
and checks receipts with it, the partner agent (federation/agent) verifies tickets and signs
receipts with it, and an auditor can do both offline. The formats, with examples, are in
docs/TRUST-FORMATS-tickets.md.

* A ticket freezes what a round reserved on one dataset. Signed by the coordinator's ledger
  key (the key of the signed ledger heads):
      signature = Ed25519(ledger key, accounting.tickets.TICKET_DOMAIN + canonical_json(ticket without "signature"))
      ticket_hash = SHA-256(canonical_json(ticket without "signature"))   (docs/TRUST-FORMATS.md)
* A receipt says what the partner ran, once its masked input is sent. Signed by the agent's
  enrolled identity key:
      signature = Ed25519(identity key, accounting.receipts.RECEIPT_DOMAIN + canonical_json(receipt without "signature"))

Canonical JSON is the ledger entries' (accounting/dp_events.py, canonical_json): sorted
keys, no whitespace, UTF-8, shortest round-trip floats, no NaN/Infinity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from accounting.receipts import SIGNED_FIELDS, receipt_message
from accounting.tickets import TICKET_FIELDS, TICKET_VERSION, ticket_hash, ticket_message
from accounting.tickets import unsigned as _unsigned

# The signed formats are the pure accounting modules' (accounting/tickets.py, accounting/receipts.py):
# one definition for the coordinator, the partner's agent and the auditor's verifier.
__all__ = ["TICKET_FIELDS", "TICKET_VERSION", "RECEIPT_FIELDS", "TrustError", "key_id", "fingerprint", "ticket_hash",
           "ticket_message", "ticket_sign", "ticket_verify", "receipt_message", "receipt_sign", "receipt_verify"]

RECEIPT_FIELDS = frozenset(SIGNED_FIELDS)


class TrustError(ValueError):
    """A ticket or receipt that does not check out; `code` is stable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def key_id(raw_public_key: bytes) -> str:
    """SHA-256 of the raw Ed25519 public key, hex: the id audit bundles and tickets name it by."""
    return hashlib.sha256(raw_public_key).hexdigest()


def fingerprint(raw_public_key: bytes) -> str:
    """What a person compares: the key id in groups of four, first 32 hex digits."""
    kid = key_id(raw_public_key)[:32]
    return ":".join(kid[i : i + 4] for i in range(0, 32, 4))


def ticket_sign(document: Mapping[str, Any], key: Ed25519PrivateKey) -> dict:
    """The ticket with its signature (hex)."""
    return {**_unsigned(document), "signature": key.sign(ticket_message(document)).hex()}


def ticket_verify(ticket: Any, public_key_raw: bytes) -> str:
    """Check the ticket's shape and its signature under `public_key_raw`; returns its hash.
    Raises TrustError(code="ticket_unsigned" | "ticket_malformed" | "ticket_signature")."""
    if not isinstance(ticket, Mapping):
        raise TrustError("ticket_unsigned", "the task carries no round ticket")
    signature = ticket.get("signature")
    if not isinstance(signature, str) or not signature:
        raise TrustError("ticket_unsigned", "the round ticket is not signed")
    missing = sorted(TICKET_FIELDS - set(ticket))
    extra = sorted(set(ticket) - TICKET_FIELDS - {"signature"})
    if missing or extra:
        raise TrustError("ticket_malformed", f"the round ticket's fields differ from the format: missing {missing}, unexpected {extra}")
    if ticket["v"] != TICKET_VERSION:
        raise TrustError("ticket_malformed", f"unknown ticket format version {ticket['v']!r}")
    if ticket["key_id"] != key_id(public_key_raw):
        raise TrustError(
            "ticket_signature",
            f"the ticket names signing key {str(ticket['key_id'])[:16]}…, not the pinned coordinator key {key_id(public_key_raw)[:16]}…",
        )
    try:
        raw = bytes.fromhex(signature)
        message = ticket_message(ticket)
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(raw, message)
    except (ValueError, TypeError, InvalidSignature):
        raise TrustError("ticket_signature", "the round ticket's signature does not verify under the pinned coordinator key") from None
    return ticket_hash(ticket)


def receipt_sign(receipt: Mapping[str, Any], key: Ed25519PrivateKey) -> dict:
    return {**_unsigned(receipt), "signature": key.sign(receipt_message(receipt)).hex()}


def receipt_verify(receipt: Any, public_key_raw: bytes) -> None:
    """Check the receipt's shape and its signature under the agent's enrolled key.
    Raises TrustError(code="receipt_malformed" | "receipt_signature")."""
    if not isinstance(receipt, Mapping):
        raise TrustError("receipt_malformed", "a receipt is a JSON object")
    if set(receipt) != RECEIPT_FIELDS | {"signature"}:
        missing = sorted(RECEIPT_FIELDS | {"signature"} - set(receipt))
        extra = sorted(set(receipt) - RECEIPT_FIELDS - {"signature"})
        raise TrustError("receipt_malformed", f"the receipt's fields differ from the format: missing {missing}, unexpected {extra}")
    if receipt["agent_public_key"] != public_key_raw.hex():
        raise TrustError("receipt_signature", "the receipt names another key than the agent's enrolled identity key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(bytes.fromhex(receipt["signature"]), receipt_message(receipt))
    except (ValueError, TypeError, InvalidSignature):
        raise TrustError("receipt_signature", "the receipt's signature does not verify under the agent's enrolled key") from None
