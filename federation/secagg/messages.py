"""Round configuration and the wire format of every message.

Small messages are canonical JSON objects (UTF-8, sorted keys) carrying
``{"v": 1, "type": ..., "round": ...}``; bytes travel as standard base64. The masked
input is binary so the d-word vector is never base64-inflated:

    b"FGSA" | version u8 (=1) | header length u16 big-endian | header JSON | vector

where the header JSON is space-padded so the vector starts at a multiple of 8 bytes and
the vector is d little-endian uint32 words. Every body is size-checked before parsing
(``max_body_bytes`` gives the cap per message type, for the HTTP layer too).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .crypto import encode_fields
from .errors import BadLength, MalformedMessage, MessageTooLarge, WrongRound
from .shamir import SHARE_BYTES

VERSION = 1
MAGIC = b"FGSA"

# Message types, in protocol order (client -> server unless noted).
ADVERTISE_KEYS = "advertise_keys"
KEY_LIST = "key_list"  # server -> every advertiser
SHARE_KEYS = "share_keys"
SHARE_RELAY = "share_relay"  # server -> each ShareKeys sender
MASKED_INPUT = "masked_input"
UNMASK_REQUEST = "unmask_request"  # server -> each survivor
UNMASK_RESPONSE = "unmask_response"

PARTY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # organisation slugs
ROUND_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_VECTOR_LENGTH = 1 << 28  # 1 GiB of uint32: far above any model we aggregate
MAX_HEADER_BYTES = 1024
NONCE_BYTES = 16
SHARES_PLAINTEXT_BYTES = 2 * SHARE_BYTES  # share of b_u || share of s_u^SK
SEALED_SHARES_BYTES = 12 + SHARES_PLAINTEXT_BYTES + 16  # nonce || ciphertext || tag


@dataclass(frozen=True)
class RoundConfig:
    """What both sides agree on before the round starts (the coordinator's round plan).

    ``roster`` is sorted on construction; a party's Shamir x-coordinate is its 1-based
    position in it, so both sides derive the same coordinates without sending them.
    ``threshold`` must exceed half the roster: then no two disjoint groups of parties can
    each reach it, which is what keeps a coordinator that told some parties "v dropped"
    and others "v survived" from getting both of v's secrets.
    """

    round_id: str
    roster: tuple[str, ...]
    threshold: int
    vector_length: int

    def __post_init__(self) -> None:
        roster = tuple(sorted(self.roster))
        object.__setattr__(self, "roster", roster)
        if not isinstance(self.round_id, str) or not ROUND_RE.match(self.round_id):
            raise ValueError("round_id must match " + ROUND_RE.pattern)
        if len(roster) < 2 or len(set(roster)) != len(roster):
            raise ValueError("the roster needs at least two distinct parties")
        if any(not isinstance(p, str) or not PARTY_RE.match(p) for p in roster):
            raise ValueError("party ids must match " + PARTY_RE.pattern)
        n = len(roster)
        if not (isinstance(self.threshold, int) and n // 2 < self.threshold <= n and self.threshold >= 2):
            raise ValueError(f"threshold must satisfy max(2, n//2 + 1) <= t <= n (n={n})")
        if not (isinstance(self.vector_length, int) and 0 < self.vector_length <= MAX_VECTOR_LENGTH):
            raise ValueError("vector_length must be a positive int")

    @property
    def n(self) -> int:
        return len(self.roster)

    def x_of(self, party: str) -> int:
        """The Shamir x-coordinate of ``party`` (1..n, by sorted roster order)."""
        return self._x[party]

    @property
    def _x(self) -> dict[str, int]:
        cache = self.__dict__.get("_x_cache")
        if cache is None:
            cache = {p: i + 1 for i, p in enumerate(self.roster)}
            object.__setattr__(self, "_x_cache", cache)
        return cache

    def digest(self) -> bytes:
        """SHA-256 of the configuration; signed into every AdvertiseKeys message."""
        return hashlib.sha256(
            encode_fields("fedgov-secagg/v1/config", self.round_id, self.threshold, self.vector_length, *self.roster)
        ).digest()

    def to_dict(self) -> dict:
        return {
            "round_id": self.round_id,
            "roster": list(self.roster),
            "threshold": self.threshold,
            "vector_length": self.vector_length,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundConfig:
        return cls(
            round_id=data["round_id"],
            roster=tuple(data["roster"]),
            threshold=data["threshold"],
            vector_length=data["vector_length"],
        )


def default_threshold(n: int) -> int:
    """The smallest threshold ``RoundConfig`` accepts: a strict majority (and at least 2)."""
    return max(2, n // 2 + 1)


def max_body_bytes(config: RoundConfig, msg_type: str) -> int:
    """Upper bound on the body of a message of ``msg_type`` in this round."""
    n = config.n
    if msg_type == MASKED_INPUT:
        return 8 + MAX_HEADER_BYTES + 4 * config.vector_length
    per_party = {
        ADVERTISE_KEYS: 0,
        KEY_LIST: 512,
        SHARE_KEYS: 512,
        SHARE_RELAY: 512,
        UNMASK_REQUEST: 128,
        UNMASK_RESPONSE: 256,
    }[msg_type]
    return 2048 + per_party * n


# ---------------------------------------------------------------- JSON messages


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise MalformedMessage(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _no_constant(token: str) -> Any:
    # Python's json reads NaN and Infinity; they are not JSON, and no message field is a float.
    raise MalformedMessage(f"{token} is not JSON")


def encode_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def decode_json(body: bytes, *, config: RoundConfig, msg_type: str) -> dict:
    """Parse and check the envelope: size cap for ``msg_type``, JSON object, version, round.

    The ``type`` field is left to the state machine, which alone can tell a replay of an
    earlier phase from an out-of-turn message.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise MalformedMessage("the body must be bytes")
    limit = max_body_bytes(config, msg_type)
    if len(body) > limit:
        raise MessageTooLarge(f"{len(body)} bytes > {limit} for {msg_type}", size=len(body), limit=limit)
    try:
        msg = json.loads(bytes(body).decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"not JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise MalformedMessage("the body must be a JSON object")
    check_envelope(msg, config=config)
    return msg


def peek_type(body: bytes, *, config: RoundConfig) -> str:
    """The ``type`` of a JSON message (size-capped at the largest JSON message of the round)."""
    msg = decode_json(body, config=config, msg_type=KEY_LIST)  # KEY_LIST has the largest JSON cap
    return msg["type"]


def check_envelope(msg: Mapping[str, Any], *, config: RoundConfig) -> None:
    if msg.get("v") != VERSION:
        raise MalformedMessage(f"unsupported version {msg.get('v')!r}")
    if msg.get("round") != config.round_id:
        raise WrongRound(f"expected round {config.round_id!r}, got {msg.get('round')!r}")
    if not isinstance(msg.get("type"), str):
        raise MalformedMessage("missing message type")


def b64e(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64d(value: Any, *, length: int | None = None, what: str = "field") -> bytes:
    if not isinstance(value, str):
        raise MalformedMessage(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessage(f"{what} is not base64") from exc
    if length is not None and len(raw) != length:
        raise MalformedMessage(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def get_str(msg: Mapping[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise MalformedMessage(f"{key!r} must be a string")
    return value


def get_list(msg: Mapping[str, Any], key: str, *, max_len: int) -> list:
    value = msg.get(key)
    if not isinstance(value, list):
        raise MalformedMessage(f"{key!r} must be a list")
    if len(value) > max_len:
        raise MalformedMessage(f"{key!r} has more than {max_len} entries")
    return value


def get_party_list(msg: Mapping[str, Any], key: str, *, max_len: int) -> list[str]:
    value = get_list(msg, key, max_len=max_len)
    if any(not isinstance(p, str) for p in value):
        raise MalformedMessage(f"{key!r} must list party ids")
    return value


def get_objects(msg: Mapping[str, Any], key: str, *, fields: Iterable[str], max_len: int) -> list[dict]:
    items = get_list(msg, key, max_len=max_len)
    fields = set(fields)
    for item in items:
        if not isinstance(item, dict) or set(item) != fields:
            raise MalformedMessage(f"entries of {key!r} must have exactly the fields {sorted(fields)}")
        if any(not isinstance(v, str) for v in item.values()):
            raise MalformedMessage(f"fields of {key!r} entries must be strings")
    return items


def share_block(shares: Mapping[str, int]) -> dict:
    """Shamir shares of several parties as {"parties": [...], "shares": base64(66-byte values, same order)}.

    One base64 string instead of one per share: a survivor at n = 50 sends 50 shares, and
    the server parses n of these messages per round.
    """
    parties = sorted(shares)
    raw = b"".join(shares[p].to_bytes(SHARE_BYTES, "big") for p in parties)
    return {"parties": parties, "shares": b64e(raw)}


def parse_share_block(msg: Mapping[str, Any], key: str, *, max_parties: int) -> tuple[list[str], bytes]:
    block = msg.get(key)
    if not isinstance(block, dict) or set(block) != {"parties", "shares"}:
        raise MalformedMessage(f"{key!r} must be an object with 'parties' and 'shares'")
    parties = get_party_list(block, "parties", max_len=max_parties)
    raw = b64d(block["shares"], length=SHARE_BYTES * len(parties), what=f"{key}.shares")
    return parties, raw


# ---------------------------------------------------------------- binary masked input


def masked_input_buffer(header: Mapping[str, Any], d: int) -> tuple[bytearray, int]:
    """A body with the header written and room for d words; returns (buffer, vector offset)."""
    raw = encode_json(header)
    pad = (-(len(MAGIC) + 3 + len(raw))) % 8
    raw += b" " * pad
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedMessage("masked-input header too long")
    prefix = MAGIC + bytes([VERSION]) + struct.pack(">H", len(raw)) + raw
    buf = bytearray(len(prefix) + 4 * d)
    buf[: len(prefix)] = prefix
    return buf, len(prefix)


def parse_masked_input(body: bytes, *, config: RoundConfig) -> tuple[dict, memoryview]:
    """Header (envelope-checked) and the vector bytes of a masked input (not yet length-checked)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise MalformedMessage("the body must be bytes")
    limit = max_body_bytes(config, MASKED_INPUT)
    if len(body) > limit:
        raise MessageTooLarge(f"{len(body)} bytes > {limit} for {MASKED_INPUT}", size=len(body), limit=limit)
    view = memoryview(body).cast("B")
    if len(view) < 7 or bytes(view[:4]) != MAGIC:
        raise MalformedMessage("not a masked-input body (bad magic)")
    if view[4] != VERSION:
        raise MalformedMessage(f"unsupported version {view[4]}")
    (hlen,) = struct.unpack(">H", view[5:7])
    if hlen > MAX_HEADER_BYTES or 7 + hlen > len(view):
        raise MalformedMessage("bad masked-input header length")
    try:
        header = json.loads(bytes(view[7 : 7 + hlen]).decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise MalformedMessage("header must be a JSON object")
    check_envelope(header, config=config)
    payload = view[7 + hlen :]
    d = header.get("d")
    if not isinstance(d, int) or isinstance(d, bool):
        raise MalformedMessage("header field 'd' must be an int")
    if d != config.vector_length or len(payload) != 4 * config.vector_length:
        raise BadLength(
            f"expected {config.vector_length} words, header says {d}, body has {len(payload) / 4:g}",
            expected=config.vector_length,
            got=len(payload) // 4,
        )
    return header, payload
