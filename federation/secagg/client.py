"""The partner side of one secure-aggregation round (runs in the partner agent).

One ``SecAggClient`` per partner per round; it generates every round key and seed itself,
so nothing is reused across rounds. Each step takes the coordinator's relayed message as
bytes and returns this partner's next message as bytes:

    c = SecAggClient(config, party="org-a", signing_key=identity_sk, identity_keys=pks)
    post(c.advertise_keys())                        # JSON
    post(c.share_keys(get_key_list()))              # JSON
    post(c.masked_input(get_share_relay(), x_u32))  # binary
    post(c.unmask(get_unmask_request()))            # JSON

A step that refuses its input raises a ``SecAggError`` and leaves the client unchanged,
so the agent can fetch the message again and retry. After a step succeeded, the agent
must keep the bytes it returned and re-send those same bytes on an HTTP retry (the
coordinator answers ``replay`` if the first copy had arrived).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import crypto, shamir
from .errors import (
    BadLength,
    DuplicateSender,
    InconsistentView,
    MalformedMessage,
    NotAMember,
    ReplayedMessage,
    TooFewSurvivors,
    UnmaskConflict,
    WrongPhase,
    WrongRecipient,
)
from .messages import (
    ADVERTISE_KEYS,
    KEY_LIST,
    MASKED_INPUT,
    NONCE_BYTES,
    SEALED_SHARES_BYTES,
    SHARE_KEYS,
    SHARE_RELAY,
    UNMASK_REQUEST,
    UNMASK_RESPONSE,
    VERSION,
    RoundConfig,
    b64d,
    b64e,
    decode_json,
    encode_json,
    get_objects,
    get_party_list,
    get_str,
    masked_input_buffer,
    share_block,
)
from .prg import WORD, apply_masks

# Client phases: what it has sent last.
NEW, ADVERTISED, SHARED, MASKED, DONE = "new", "advertised", "shared", "masked", "done"
# The server message each phase waits for.
_EXPECTS = {ADVERTISED: KEY_LIST, SHARED: SHARE_RELAY, MASKED: UNMASK_REQUEST}
_SERVER_TYPES = (KEY_LIST, SHARE_RELAY, UNMASK_REQUEST)


class SecAggClient:
    """State machine of one partner in one round (Bonawitz et al. 2017, semi-honest variant)."""

    def __init__(
        self,
        config: RoundConfig,
        *,
        party: str,
        signing_key: Ed25519PrivateKey,
        identity_keys: Mapping[str, bytes],
    ) -> None:
        if party not in config.roster:
            raise NotAMember(f"{party!r} is not in the roster", party=party)
        missing = set(config.roster) - set(identity_keys)
        if missing:
            raise ValueError(f"no identity key for {sorted(missing)}")
        if identity_keys[party] != crypto.ed25519_public_raw(signing_key):
            raise ValueError("signing_key does not match this party's registered identity key")
        self.config = config
        self.party = party
        self._signing_key = signing_key
        self._identity_keys = {p: bytes(identity_keys[p]) for p in config.roster}
        self.phase = NEW
        self._handled: list[str] = []  # server message types already processed
        self._c_sk, self._c_pk = crypto.x25519_generate()
        self._s_sk, self._s_pk = crypto.x25519_generate()
        self._b: bytes | None = None
        self._u1: dict[str, tuple[bytes, bytes]] = {}  # party -> (c_pk, s_pk)
        self._channel: dict[str, bytes] = {}  # party -> AES-GCM key
        self._own_shares: tuple[int, int] | None = None  # my shares of my b and s_sk
        self._held: dict[str, tuple[int, int]] = {}  # party -> (share of b_party, share of s_party)
        self._u2: list[str] = []

    # ------------------------------------------------------------------ helpers

    def _check_turn(self, msg: Mapping[str, Any], expected: str) -> None:
        kind = msg.get("type")
        if kind in self._handled:
            raise ReplayedMessage(f"{kind} was already processed", type=kind)
        if kind != expected or _EXPECTS.get(self.phase) != expected:
            raise WrongPhase(f"got {kind!r} while {self.phase!r}", phase=self.phase, type=kind)

    def _envelope(self, kind: str) -> dict:
        return {
            "v": VERSION,
            "type": kind,
            "round": self.config.round_id,
            "sender": self.party,
            "nonce": b64e(os.urandom(NONCE_BYTES)),
        }

    # ------------------------------------------------------------------ phase 0

    def advertise_keys(self) -> bytes:
        """AdvertiseKeys: fresh (c_pk, s_pk), signed with the long-term identity key."""
        if self.phase != NEW:
            raise WrongPhase(f"keys were already advertised (phase {self.phase!r})", phase=self.phase)
        transcript = crypto.advertise_transcript(
            config_digest=self.config.digest(), sender=self.party, c_pk=self._c_pk, s_pk=self._s_pk
        )
        msg = self._envelope(ADVERTISE_KEYS)
        msg.update(
            c_pk=b64e(self._c_pk),
            s_pk=b64e(self._s_pk),
            sig=b64e(crypto.sign(self._signing_key, transcript)),
        )
        self.phase = ADVERTISED
        return encode_json(msg)

    # ------------------------------------------------------------------ phase 1

    def share_keys(self, key_list: bytes) -> bytes:
        """Check the relayed signed key list; send encrypted shares of b_u and s_u^SK to each member."""
        cfg = self.config
        msg = decode_json(key_list, config=cfg, msg_type=KEY_LIST)
        self._check_turn(msg, KEY_LIST)
        entries = get_objects(msg, "keys", fields=("party", "c_pk", "s_pk", "sig"), max_len=cfg.n)
        digest = cfg.digest()
        u1: dict[str, tuple[bytes, bytes]] = {}
        for e in entries:
            p = e["party"]
            if p not in self._identity_keys:
                raise NotAMember(f"{p!r} is not in the roster", party=p)
            if p in u1:
                raise DuplicateSender(f"{p!r} appears twice in the key list", party=p)
            c_pk = b64d(e["c_pk"], length=32, what="c_pk")
            s_pk = b64d(e["s_pk"], length=32, what="s_pk")
            sig = b64d(e["sig"], length=crypto.SIGNATURE_BYTES, what="sig")
            transcript = crypto.advertise_transcript(config_digest=digest, sender=p, c_pk=c_pk, s_pk=s_pk)
            crypto.verify(self._identity_keys[p], sig, transcript)
            u1[p] = (c_pk, s_pk)
        if u1.get(self.party) != (self._c_pk, self._s_pk):
            raise InconsistentView("the key list does not carry this party's advertised keys")
        if len(u1) < cfg.threshold:
            raise TooFewSurvivors(
                f"{len(u1)} parties advertised keys, threshold is {cfg.threshold}",
                survivors=len(u1),
                threshold=cfg.threshold,
            )
        all_keys = [k for pair in u1.values() for k in pair]
        if len(set(all_keys)) != len(all_keys):
            raise InconsistentView("two advertised public keys are equal")

        c_sk = crypto.x25519_load(self._c_sk)
        channel = {
            v: crypto.channel_key(c_sk, c_pk, round_id=cfg.round_id, a=self.party, b=v)
            for v, (c_pk, _) in u1.items()
            if v != self.party
        }
        b = os.urandom(32)
        xs = [cfg.x_of(v) for v in u1]
        b_shares = shamir.split(b, threshold=cfg.threshold, xs=xs)
        s_shares = shamir.split(self._s_sk, threshold=cfg.threshold, xs=xs)
        out = []
        for v in sorted(channel):
            x = cfg.x_of(v)
            plaintext = shamir.share_to_bytes(b_shares[x]) + shamir.share_to_bytes(s_shares[x])
            aad = crypto.share_aad(round_id=cfg.round_id, sender=self.party, recipient=v)
            out.append({"to": v, "ct": b64e(crypto.seal(channel[v], plaintext, aad))})
        reply = self._envelope(SHARE_KEYS)
        reply["shares"] = out

        me = cfg.x_of(self.party)
        self._u1, self._channel, self._b = u1, channel, b
        self._own_shares = (b_shares[me], s_shares[me])
        self._handled.append(KEY_LIST)
        self.phase = SHARED
        return encode_json(reply)

    # ------------------------------------------------------------------ phase 2

    def masked_input(self, share_relay: bytes, x: np.ndarray) -> bytes:
        """Decrypt the shares held for others; return y = x + PRG(b_u) + sum_v ±PRG(s_uv) mod 2^32.

        ``x`` is the quantised update, a 1-D ``np.uint32`` array of the round's vector length.
        The result is the binary masked-input body.
        """
        cfg = self.config
        msg = decode_json(share_relay, config=cfg, msg_type=SHARE_RELAY)
        self._check_turn(msg, SHARE_RELAY)
        if get_str(msg, "recipient") != self.party:
            raise WrongRecipient(f"addressed to {msg['recipient']!r}", recipient=msg["recipient"])
        if not isinstance(x, np.ndarray) or x.dtype != np.uint32:
            raise TypeError("x must be an np.uint32 array (the quantised update)")
        if x.ndim != 1 or x.shape[0] != cfg.vector_length:
            raise BadLength(
                f"x has shape {x.shape}, the round expects ({cfg.vector_length},)",
                expected=cfg.vector_length,
                got=x.size,
            )
        entries = get_objects(msg, "shares", fields=("from", "ct"), max_len=cfg.n)
        held: dict[str, tuple[int, int]] = {}
        for e in entries:
            u = e["from"]
            if u == self.party:
                raise InconsistentView("a share from this party to itself was relayed")
            if u not in self._u1:
                raise NotAMember(f"{u!r} did not advertise keys in this round", party=u)
            if u in held:
                raise DuplicateSender(f"two shares from {u!r}", party=u)
            sealed = b64d(e["ct"], length=SEALED_SHARES_BYTES, what="ct")
            aad = crypto.share_aad(round_id=cfg.round_id, sender=u, recipient=self.party)
            plaintext = crypto.open_sealed(self._channel[u], sealed, aad)
            held[u] = (
                shamir.share_from_bytes(plaintext[:66]),
                shamir.share_from_bytes(plaintext[66:]),
            )
        held[self.party] = self._own_shares
        u2 = sorted(held)
        if len(u2) < cfg.threshold:
            raise TooFewSurvivors(
                f"{len(u2)} parties shared keys, threshold is {cfg.threshold}",
                survivors=len(u2),
                threshold=cfg.threshold,
            )

        me = cfg.x_of(self.party)
        s_sk = crypto.x25519_load(self._s_sk)
        masks = [(self._b, 1)]
        for v in u2:
            if v != self.party:
                seed = crypto.mask_seed(s_sk, self._u1[v][1], round_id=cfg.round_id, a=self.party, b=v)
                masks.append((seed, 1 if me < cfg.x_of(v) else -1))
        header = self._envelope(MASKED_INPUT)
        header["d"] = cfg.vector_length
        body, offset = masked_input_buffer(header, cfg.vector_length)
        y = np.frombuffer(body, dtype=WORD, offset=offset)
        y[:] = x  # native uint32 == '<u4' on every platform we run; numpy converts otherwise
        apply_masks(y, masks)

        self._held, self._u2 = held, u2
        self._channel = {}
        self._handled.append(SHARE_RELAY)
        self.phase = MASKED
        return bytes(body)

    # ------------------------------------------------------------------ phase 3

    def unmask(self, unmask_request: bytes) -> bytes:
        """Reveal shares of b_v for survivors and of s_v^SK for dropouts, never both for one party."""
        cfg = self.config
        msg = decode_json(unmask_request, config=cfg, msg_type=UNMASK_REQUEST)
        self._check_turn(msg, UNMASK_REQUEST)
        survivors = get_party_list(msg, "survivors", max_len=cfg.n)
        dropouts = get_party_list(msg, "dropouts", max_len=cfg.n)
        for group in (survivors, dropouts):
            if len(set(group)) != len(group):
                raise DuplicateSender("a party is listed twice", party=group)
        both = set(survivors) & set(dropouts)
        if both:
            raise UnmaskConflict(f"{sorted(both)} listed as survivor and dropout", parties=sorted(both))
        strangers = (set(survivors) | set(dropouts)) - set(self._u2)
        if strangers:
            raise NotAMember(f"{sorted(strangers)} did not share keys with this party", parties=sorted(strangers))
        if set(survivors) | set(dropouts) != set(self._u2):
            raise InconsistentView("survivors and dropouts must together be the parties that shared keys")
        if self.party not in survivors:
            raise InconsistentView("this party is not listed as a survivor")
        if len(survivors) < cfg.threshold:
            raise TooFewSurvivors(
                f"{len(survivors)} survivors, threshold is {cfg.threshold}",
                survivors=len(survivors),
                threshold=cfg.threshold,
            )
        reply = self._envelope(UNMASK_RESPONSE)
        reply["b_shares"] = share_block({v: self._held[v][0] for v in survivors})
        reply["s_shares"] = share_block({v: self._held[v][1] for v in dropouts})
        # Answer once: a second request could ask for the other secret of some party.
        self._held, self._b, self._own_shares = {}, None, None
        self._s_sk = self._c_sk = b""
        self._handled.append(UNMASK_REQUEST)
        self.phase = DONE
        return encode_json(reply)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """JSON-able state. It holds this round's private keys and seed: keep it at the partner only."""
        return {
            "v": VERSION,
            "config": self.config.to_dict(),
            "party": self.party,
            "identity_keys": {p: k.hex() for p, k in self._identity_keys.items()},
            "phase": self.phase,
            "handled": list(self._handled),
            "c_sk": self._c_sk.hex(),
            "c_pk": self._c_pk.hex(),
            "s_sk": self._s_sk.hex(),
            "s_pk": self._s_pk.hex(),
            "b": self._b.hex() if self._b is not None else None,
            "u1": {p: [c.hex(), s.hex()] for p, (c, s) in self._u1.items()},
            "channel": {p: k.hex() for p, k in self._channel.items()},
            "own_shares": [str(v) for v in self._own_shares] if self._own_shares else None,
            "held": {p: [str(b), str(s)] for p, (b, s) in self._held.items()},
            "u2": list(self._u2),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, signing_key: Ed25519PrivateKey) -> SecAggClient:
        if data.get("v") != VERSION:
            raise MalformedMessage("unsupported client state version")
        config = RoundConfig.from_dict(data["config"])
        identity = {p: bytes.fromhex(k) for p, k in data["identity_keys"].items()}
        obj = cls(config, party=data["party"], signing_key=signing_key, identity_keys=identity)
        obj.phase = data["phase"]
        obj._handled = list(data["handled"])
        obj._c_sk, obj._c_pk = bytes.fromhex(data["c_sk"]), bytes.fromhex(data["c_pk"])
        obj._s_sk, obj._s_pk = bytes.fromhex(data["s_sk"]), bytes.fromhex(data["s_pk"])
        obj._b = bytes.fromhex(data["b"]) if data["b"] is not None else None
        obj._u1 = {p: (bytes.fromhex(c), bytes.fromhex(s)) for p, (c, s) in data["u1"].items()}
        obj._channel = {p: bytes.fromhex(k) for p, k in data["channel"].items()}
        obj._own_shares = tuple(int(v) for v in data["own_shares"]) if data["own_shares"] else None
        obj._held = {p: (int(b), int(s)) for p, (b, s) in data["held"].items()}
        obj._u2 = list(data["u2"])
        return obj
