"""Webhook signatures: HMAC-SHA256 over the timestamp and the body, with the webhook's secret.

What fedgov sends with every webhook POST:

    X-Fedgov-Delivery:  the delivery's id (the same on every retry of one delivery)
    Idempotency-Key:    the same id, under the header name many frameworks already read
    X-Fedgov-Event:     the notification kind, e.g. approval_waiting
    X-Fedgov-Timestamp: seconds since the epoch when this attempt was signed
    X-Fedgov-Signature: sha256=<hex of HMAC-SHA256(secret, timestamp + "." + body)>

How a receiver verifies (`verify` below is the reference; it needs only the standard library):
1. Take the raw body bytes as received (before any JSON parsing).
2. Compute HMAC-SHA256 with the shared secret over `<X-Fedgov-Timestamp>.` followed by the
   body, hex-encode it, and compare with the signature header in constant time.
3. Refuse a timestamp more than five minutes from your clock: a captured request cannot be
   replayed later, because changing the timestamp breaks the signature.
4. Keep the X-Fedgov-Delivery ids you have processed and skip a repeat: fedgov delivers at
   least once (a retry after a lost answer carries the same id).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Fedgov-Signature"
TIMESTAMP_HEADER = "X-Fedgov-Timestamp"
DELIVERY_HEADER = "X-Fedgov-Delivery"
EVENT_HEADER = "X-Fedgov-Event"
TOLERANCE_SECONDS = 300


def signed_bytes(timestamp: int | str, body: bytes) -> bytes:
    return str(timestamp).encode() + b"." + body


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), signed_bytes(timestamp, body), hashlib.sha256).hexdigest()


def verify(secret: str, *, timestamp: str, signature: str, body: bytes, now: float | None = None,
           tolerance: int = TOLERANCE_SECONDS) -> bool:
    """True when `signature` is this body's and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def headers(*, secret: str, body: bytes, delivery_id: str, kind: str, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        "Idempotency-Key": delivery_id,
        EVENT_HEADER: kind,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
    }
