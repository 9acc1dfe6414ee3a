"""Partners' receipts, as pure functions (docs/TRUST-FORMATS.md; ARCHITECTURE.md, Trust 3).

No Django here: the coordinator's `receipt_record` service and the auditor's verifier
(accounting/verify.py) check a receipt with the very same code.

A receipt is what a partner's agent countersigns after running a round on a dataset:

    {"round", "dataset", "ticket_hash", "event", "local_ledger_head", "agent_public_key",
     "signature"}

`signature` is the hex Ed25519 signature, by the agent's enrolled identity key, of
b"fedgov.receipt.v1\\n" + canonical_json(receipt without "signature").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import dp_events

RECEIPT_DOMAIN = b"fedgov.receipt.v1\n"
RECEIPT_CHAIN_DOMAIN = b"fedgov.receipt.chain.v1\n"
SIGNED_FIELDS = ("round", "dataset", "ticket_hash", "event", "local_ledger_head", "agent_public_key")
RECEIPT_FIELDS = (*SIGNED_FIELDS, "signature")
GENESIS_HASH = "0" * 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_HEX = re.compile(r"[0-9a-f]+")


class ReceiptFormatError(ValueError):
    """A receipt that is malformed or whose signature does not verify."""


def receipt_message(receipt: Mapping[str, Any]) -> bytes:
    """The bytes an agent signs: the domain, then the canonical receipt without its signature."""
    body = {k: v for k, v in receipt.items() if k != "signature"}
    return RECEIPT_DOMAIN + dp_events.canonical_json(body).encode("utf-8")


def sign_receipt(body: Mapping[str, Any], private_key) -> dict:
    """The receipt `body` with its signature by `private_key` (an Ed25519PrivateKey)."""
    receipt = {k: v for k, v in body.items() if k != "signature"}
    receipt["signature"] = private_key.sign(receipt_message(receipt)).hex()
    return receipt


def check_format(receipt: Any) -> None:
    """Exactly the receipt's fields, each of its type; raises ReceiptFormatError."""
    if not isinstance(receipt, Mapping):
        raise ReceiptFormatError("a receipt is a JSON object")
    keys = set(receipt)
    if keys != set(RECEIPT_FIELDS):
        extra, missing = sorted(map(str, keys - set(RECEIPT_FIELDS))), sorted(set(RECEIPT_FIELDS) - keys)
        raise ReceiptFormatError(f"receipt fields differ from the format: unexpected {extra}, missing {missing}")
    rnd = receipt["round"]
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd <= 0:
        raise ReceiptFormatError(f"receipt round must be a positive integer, got {rnd!r}")
    if not isinstance(receipt["dataset"], str) or not receipt["dataset"]:
        raise ReceiptFormatError("receipt dataset must be a slug")
    if not isinstance(receipt["ticket_hash"], str) or not _HEX64.fullmatch(receipt["ticket_hash"]):
        raise ReceiptFormatError("receipt ticket_hash must be 64 lowercase hex digits")
    if not isinstance(receipt["event"], Mapping):
        raise ReceiptFormatError("receipt event must be a DP-event object")
    head = receipt["local_ledger_head"]
    if not isinstance(head, str) or not head or not _HEX.fullmatch(head):
        raise ReceiptFormatError("receipt local_ledger_head must be lowercase hex")
    if not isinstance(receipt["agent_public_key"], str) or not _HEX64.fullmatch(receipt["agent_public_key"]):
        raise ReceiptFormatError("receipt agent_public_key must be 64 lowercase hex digits")
    if not isinstance(receipt["signature"], str) or not _HEX128.fullmatch(receipt["signature"]):
        raise ReceiptFormatError("receipt signature must be 128 lowercase hex digits")
    try:
        dp_events.canonical_json(dict(receipt))
    except (TypeError, ValueError) as e:
        raise ReceiptFormatError(f"receipt cannot be serialised canonically: {e}") from None


def verify_signature(receipt: Mapping[str, Any], public_key_hex: str) -> None:
    """The receipt is well formed and signed by the Ed25519 key `public_key_hex`."""
    check_format(receipt)
    if receipt["agent_public_key"] != public_key_hex:
        raise ReceiptFormatError("the receipt names another agent key than the one it is checked against")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    except ValueError as e:
        raise ReceiptFormatError(f"agent public key unusable: {e}") from None
    try:
        key.verify(bytes.fromhex(receipt["signature"]), receipt_message(receipt))
    except InvalidSignature:
        raise ReceiptFormatError("the receipt's signature does not verify") from None


def events_equal(a: Any, b: Any) -> bool:
    """Two DP events are the same event: equal canonical JSON."""
    try:
        return dp_events.canonical_json(a) == dp_events.canonical_json(b)
    except (TypeError, ValueError):
        return False


def chain_hash(prev_hash: str, receipt: Mapping[str, Any]) -> str:
    """The coordinator's receipt chain: each stored receipt hashed with the previous one."""
    return hashlib.sha256(
        RECEIPT_CHAIN_DOMAIN + prev_hash.encode("ascii") + dp_events.canonical_json(dict(receipt)).encode("utf-8")
    ).hexdigest()
