"""The coordinator side of one secure-aggregation round.

The coordinator runs each phase in a separate Celery task, so the state is plain data:
``to_dict()`` is JSON-able and small (keys, party lists, shares: O(n^2) bytes at most),
and the running sum -- the only O(d) part -- travels separately as raw bytes
(``running_sum_bytes()``), e.g. in a file or a BinaryField:

    srv = SecAggServer(config, identity_keys=registered_ed25519_keys)
    srv.receive_advertise_keys(body)...;   key_list = srv.close_advertise_keys()   # to all
    srv.receive_share_keys(body)...;       relays = srv.close_share_keys()         # {party: body}
    srv.receive_masked_input(body)...;     request = srv.close_masked_input()      # to survivors
    srv.receive_unmask_response(body)...;  result = srv.finalize()                 # the sum

    state, acc = srv.to_dict(), srv.running_sum_bytes()   # persist
    srv = SecAggServer.from_dict(state, running_sum=acc)   # next task

The state above holds every accepted ShareKeys message (n*(n-1) sealed shares) and every
unmask response (n^2 field elements). A caller that persists after every message can keep
those apart, one record per sender, so that taking one message costs O(n), not O(n^2):

    c = srv.receive_share_keys(body)        # a Contribution: (phase, sender, JSON-able data)
    store(c.phase, c.sender, c.data); state = srv.to_dict(contributions=False)   # O(n)
    ...
    srv = SecAggServer.from_dict(state)     # "detached": holds no contribution
    srv.restore_contributions(load(srv.phase))   # {sender: data}, once, before closing
    relays = srv.close_share_keys()

A detached server validates a message exactly as an attached one (no check compares one
sender's contribution with another's), so refusals and their codes do not change; it only
refuses to close a phase, or to finalize, before its contributions are restored.

Masked inputs are added into one running uint32 sum on arrival and then dropped, so
memory grows with d, not n*d. The server never holds an unmasked individual input: it
accepts a masked input only during MaskedInput, and it learns b_u only for parties whose
masked input arrived and s_u^SK only for parties whose input did not.

``receive_*`` validate the whole message before touching the state, so a rejected message
(``SecAggError``) leaves the server exactly as it was. They are not safe to call
concurrently on copies of one state: the caller serialises them (e.g. ``select_for_update``
on the round row around load -> receive -> save).

``close_*`` and ``finalize`` raise ``TooFewSurvivors`` when fewer than the threshold
remain; the server has then moved to phase "aborted" (persist it) and releases nothing.

The persistence methods (``to_dict``, ``from_dict``, ``restore_contributions``, ...) and
``Contribution`` live in federation/secagg/server_state.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import crypto, shamir
from .errors import (
    BadLength,
    DuplicateSender,
    InconsistentView,
    MalformedMessage,
    NotAMember,
    ReconstructionFailed,
    ReplayedMessage,
    RoundAborted,
    TooFewSurvivors,
    UnmaskConflict,
    WrongPhase,
    WrongSender,
)
from .messages import (
    ADVERTISE_KEYS,
    KEY_LIST,
    MAGIC,
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
    decode_json,
    encode_json,
    get_objects,
    get_str,
    parse_masked_input,
    parse_share_block,
    peek_type,
)
from .prg import WORD, apply_masks
from .server_state import CLIENT_TYPES, Contribution, StoredState, responses_out

# Server phases are named after the client message type they collect; then these two.
DONE, ABORTED = "done", "aborted"


@dataclass(frozen=True)
class AggregateResult:
    """The output of a round: sum mod 2^32 of the quantised inputs of ``contributors``."""

    vector: np.ndarray  # np.uint32, shape (d,)
    contributors: tuple[str, ...]  # whose inputs are in the sum (the survivors of MaskedInput)
    dropouts: tuple[str, ...]  # shared keys but sent no masked input: not in the sum


class SecAggServer(StoredState):
    def __init__(self, config: RoundConfig, *, identity_keys: Mapping[str, bytes]) -> None:
        missing = set(config.roster) - set(identity_keys)
        if missing:
            raise ValueError(f"no identity key for {sorted(missing)}")
        self.config = config
        self._identity_keys = {p: bytes(identity_keys[p]) for p in config.roster}
        self.phase = ADVERTISE_KEYS
        self._nonces: dict[str, dict[str, str]] = {t: {} for t in CLIENT_TYPES}  # type -> sender -> nonce
        self._advertised: dict[str, dict[str, str]] = {}  # party -> {c_pk, s_pk, sig} (b64)
        self._s_pk: dict[str, bytes] = {}  # U1 -> masking public key (kept for unmasking)
        self._cts: dict[str, dict[str, str]] = {}  # sender -> recipient -> sealed shares (b64)
        self._u2: list[str] = []
        self._u3: list[str] = []  # masked inputs received, in arrival order
        self._running_sum: np.ndarray | None = None
        self._survivors: list[str] = []
        self._dropouts: list[str] = []
        self._responses: dict[str, dict[str, dict[str, int]]] = {}  # responder -> {"b"|"s": {party: y}}
        # True when restored from a state saved without contributions: _cts / _responses
        # are then kept by the caller, and empty here until restore_contributions().
        self._detached = False

    # ------------------------------------------------------------------ helpers

    def _check_turn(self, msg: Mapping[str, Any], authenticated: str | None = None) -> tuple[str, str]:
        """(sender, nonce) of a client message, after sender / replay / phase / duplicate
        checks. ``authenticated``: the party the transport authenticated (the coordinator
        knows which agent posted); a message naming anyone else is refused first."""
        kind = msg.get("type")
        sender = get_str(msg, "sender")
        if authenticated is not None and sender != authenticated:
            raise WrongSender(f"{sender!r} in a message delivered by {authenticated!r}", sender=sender)
        nonce = get_str(msg, "nonce")
        b64d(nonce, length=NONCE_BYTES, what="nonce")
        if kind not in self._nonces:
            raise MalformedMessage(f"unknown message type {kind!r}")
        if self._nonces[kind].get(sender) == nonce:
            raise ReplayedMessage(f"{kind} from {sender!r} was already received", type=kind, sender=sender)
        if self.phase == ABORTED:
            raise RoundAborted("the round was aborted")
        if kind != self.phase:
            raise WrongPhase(f"got {kind!r} during {self.phase!r}", phase=self.phase, type=kind)
        if sender in self._nonces[kind]:
            raise DuplicateSender(f"{sender!r} already sent {kind}", sender=sender)
        return sender, nonce

    def _abort(self, survivors: int, stage: str) -> TooFewSurvivors:
        self.phase = ABORTED
        self._running_sum = None  # no partial sum can leak out of an aborted round
        self._cts, self._responses = {}, {}
        t = self.config.threshold
        return TooFewSurvivors(f"{survivors} parties left after {stage}, threshold is {t}", survivors=survivors, threshold=t)

    def _require_phase(self, phase: str) -> None:
        if self.phase == ABORTED:
            raise RoundAborted("the round was aborted")
        if self.phase != phase:
            raise WrongPhase(f"cannot close {phase!r} during {self.phase!r}", phase=self.phase)

    def pending(self) -> list[str]:
        """Parties the current phase still waits for (close early when this is empty)."""
        expected = {
            ADVERTISE_KEYS: self.config.roster,
            SHARE_KEYS: self._s_pk,
            MASKED_INPUT: self._u2,
            UNMASK_RESPONSE: self._survivors,
        }.get(self.phase, ())
        received = self._nonces.get(self.phase, {})
        return sorted(p for p in expected if p not in received)

    def receive(self, body: bytes, *, sender: str | None = None) -> str:
        """Route any client message to its ``receive_*`` by its type; returns that type.

        For a single POST endpoint: a binary body is a masked input, a JSON body names its
        ``type``. Refusals are those of the ``receive_*`` method (``wrong_phase`` if the type
        does not belong to the current phase). It drops the ``Contribution`` those return: a
        caller that keeps contributions apart calls ``receive_*`` itself. ``sender``: the
        party the transport authenticated; a message naming another sender is refused
        (``wrong_sender``).
        """
        if bytes(body[: len(MAGIC)]) == MAGIC:
            self.receive_masked_input(body, sender=sender)
            return MASKED_INPUT
        kind = peek_type(body, config=self.config)
        handler = {
            ADVERTISE_KEYS: self.receive_advertise_keys,
            SHARE_KEYS: self.receive_share_keys,
            UNMASK_RESPONSE: self.receive_unmask_response,
        }.get(kind)
        if handler is None:
            raise MalformedMessage(f"not a client message type: {kind!r}")
        handler(body, sender=sender)
        return kind

    @property
    def running_sum(self) -> np.ndarray | None:
        return self._running_sum

    # ------------------------------------------------------------------ phase 0

    def receive_advertise_keys(self, body: bytes, *, sender: str | None = None) -> None:
        cfg = self.config
        msg = decode_json(body, config=cfg, msg_type=ADVERTISE_KEYS)
        sender, nonce = self._check_turn(msg, sender)
        if sender not in self._identity_keys:
            raise NotAMember(f"{sender!r} is not in the roster", party=sender)
        c_pk = b64d(msg.get("c_pk"), length=32, what="c_pk")
        s_pk = b64d(msg.get("s_pk"), length=32, what="s_pk")
        sig = b64d(msg.get("sig"), length=crypto.SIGNATURE_BYTES, what="sig")
        transcript = crypto.advertise_transcript(config_digest=cfg.digest(), sender=sender, c_pk=c_pk, s_pk=s_pk)
        crypto.verify(self._identity_keys[sender], sig, transcript)
        seen = {k for e in self._advertised.values() for k in (e["c_pk"], e["s_pk"])}
        if msg["c_pk"] in seen or msg["s_pk"] in seen or c_pk == s_pk:
            raise InconsistentView("a public key was already advertised in this round")
        self._advertised[sender] = {"c_pk": msg["c_pk"], "s_pk": msg["s_pk"], "sig": msg["sig"]}
        self._nonces[ADVERTISE_KEYS][sender] = nonce

    def close_advertise_keys(self) -> bytes:
        """The signed key list U1, the same body for every advertiser."""
        self._require_phase(ADVERTISE_KEYS)
        if len(self._advertised) < self.config.threshold:
            raise self._abort(len(self._advertised), "AdvertiseKeys")
        keys = [{"party": p, **self._advertised[p]} for p in sorted(self._advertised)]
        self._s_pk = {p: b64d(e["s_pk"]) for p, e in self._advertised.items()}
        self._advertised = {}  # channel keys are not needed any more
        self.phase = SHARE_KEYS
        return encode_json({"v": VERSION, "type": KEY_LIST, "round": self.config.round_id, "keys": keys})

    # ------------------------------------------------------------------ phase 1

    def receive_share_keys(self, body: bytes, *, sender: str | None = None) -> Contribution:
        cfg = self.config
        msg = decode_json(body, config=cfg, msg_type=SHARE_KEYS)
        sender, nonce = self._check_turn(msg, sender)
        if sender not in self._s_pk:
            raise NotAMember(f"{sender!r} did not advertise keys", party=sender)
        entries = get_objects(msg, "shares", fields=("to", "ct"), max_len=cfg.n)
        cts: dict[str, str] = {}
        for e in entries:
            v = e["to"]
            if v not in self._s_pk or v == sender:
                raise NotAMember(f"a share for {v!r}, who is not another member of U1", party=v)
            if v in cts:
                raise DuplicateSender(f"two shares for {v!r}", party=v)
            b64d(e["ct"], length=SEALED_SHARES_BYTES, what="ct")
            cts[v] = e["ct"]
        missing = set(self._s_pk) - set(cts) - {sender}
        if missing:
            raise InconsistentView(f"no share for {sorted(missing)}", parties=sorted(missing))
        if not self._detached:
            self._cts[sender] = cts
        self._nonces[SHARE_KEYS][sender] = nonce
        return Contribution(SHARE_KEYS, sender, dict(cts))

    def close_share_keys(self) -> dict[str, bytes]:
        """{recipient: body}: each ShareKeys sender gets the shares addressed to it by the others."""
        self._require_phase(SHARE_KEYS)
        self._require_contributions()
        cfg = self.config
        u2 = sorted(self._cts)
        if len(u2) < cfg.threshold:
            raise self._abort(len(u2), "ShareKeys")
        relays = {}
        for v in u2:
            shares = [{"from": u, "ct": self._cts[u][v]} for u in u2 if u != v]
            relays[v] = encode_json({"v": VERSION, "type": SHARE_RELAY, "round": cfg.round_id, "recipient": v, "shares": shares})
        self._u2, self._cts = u2, {}
        self._running_sum = np.zeros(cfg.vector_length, dtype=np.uint32)
        self.phase = MASKED_INPUT
        return relays

    # ------------------------------------------------------------------ phase 2

    def receive_masked_input(self, body: bytes, *, sender: str | None = None) -> None:
        """Add one masked input into the running sum (binary body from ``SecAggClient.masked_input``)."""
        header, payload = parse_masked_input(body, config=self.config)
        sender, nonce = self._check_turn(header, sender)
        if sender not in self._u2:
            raise NotAMember(f"{sender!r} did not share keys", party=sender)
        y = np.frombuffer(payload, dtype=WORD)
        acc = self._running_sum
        if acc is None or acc.shape != y.shape:  # only a corrupted restore can get here
            raise BadLength("the running sum does not match the vector length")
        np.add(acc, y, out=acc)  # mod 2^32; the last step, after every check passed
        self._u3.append(sender)
        self._nonces[MASKED_INPUT][sender] = nonce

    def close_masked_input(self) -> bytes:
        """Announce survivors (masked input arrived) and dropouts (shared keys, no input)."""
        self._require_phase(MASKED_INPUT)
        if len(self._u3) < self.config.threshold:
            raise self._abort(len(self._u3), "MaskedInput")
        self._survivors = sorted(self._u3)
        self._dropouts = sorted(set(self._u2) - set(self._u3))
        self.phase = UNMASK_RESPONSE
        return self.unmask_request()

    def unmask_request(self) -> bytes:
        """The body sent to every survivor in Unmasking (re-derivable for retries)."""
        return encode_json(
            {
                "v": VERSION,
                "type": UNMASK_REQUEST,
                "round": self.config.round_id,
                "survivors": self._survivors,
                "dropouts": self._dropouts,
            }
        )

    # ------------------------------------------------------------------ phase 3

    def receive_unmask_response(self, body: bytes, *, sender: str | None = None) -> Contribution:
        cfg = self.config
        msg = decode_json(body, config=cfg, msg_type=UNMASK_RESPONSE)
        sender, nonce = self._check_turn(msg, sender)
        if sender not in self._survivors:
            raise NotAMember(f"{sender!r} is not a survivor", party=sender)
        parsed = {}
        for key, wanted in (("b_shares", self._survivors), ("s_shares", self._dropouts)):
            parties, raw = parse_share_block(msg, key, max_parties=cfg.n)
            if parties != wanted:  # an honest client lists exactly ``wanted``, in this order
                self._explain_bad_share_list(key, parties, wanted)
            size = shamir.SHARE_BYTES
            ys = [int.from_bytes(raw[i : i + size], "big") for i in range(0, len(raw), size)]
            if ys and max(ys) >= shamir.PRIME:
                raise MalformedMessage("a share is not a field element")
            parsed[key[0]] = dict(zip(parties, ys))
        if not self._detached:
            self._responses[sender] = parsed
        self._nonces[UNMASK_RESPONSE][sender] = nonce
        return Contribution(UNMASK_RESPONSE, sender, responses_out(parsed))

    def _explain_bad_share_list(self, key: str, parties: list[str], wanted: list[str]) -> None:
        seen: set[str] = set()
        for p in parties:
            if p not in self._u2:
                raise NotAMember(f"a share of {p!r}, who did not share keys", party=p)
            if p not in wanted:
                raise UnmaskConflict(f"{key} must not contain {p!r}", party=p)
            if p in seen:
                raise DuplicateSender(f"two {key} for {p!r}", party=p)
            seen.add(p)
        raise InconsistentView(f"{key} must list exactly {wanted}, in that order")

    @property
    def survivors(self) -> list[str]:
        """Parties whose masked input arrived (announced when MaskedInput closes)."""
        return list(self._survivors)

    @property
    def responders(self) -> list[str]:
        """Survivors whose unmask response was accepted (known from the O(n) state alone)."""
        return sorted(self._nonces[UNMASK_RESPONSE]) if self.phase == UNMASK_RESPONSE else []

    @property
    def can_finalize(self) -> bool:
        return self.phase == UNMASK_RESPONSE and len(self.responders) >= self.config.threshold

    def finalize(self) -> AggregateResult:
        """Reconstruct with exactly t shares, remove every mask, return the sum of the survivors."""
        self._require_phase(UNMASK_RESPONSE)
        self._require_contributions()
        cfg = self.config
        if len(self._responses) < cfg.threshold:
            raise self._abort(len(self._responses), "Unmasking")
        responders = sorted(self._responses, key=cfg.x_of)[: cfg.threshold]
        lagrange = shamir.LagrangeAtZero([cfg.x_of(r) for r in responders])  # once, for every secret

        def secret(kind: str, party: str) -> bytes:
            return lagrange.secret({cfg.x_of(r): self._responses[r][kind][party] for r in responders})

        masks: list[tuple[bytes, int]] = [(secret("b", u), -1) for u in self._survivors]
        for v in self._dropouts:
            s_sk = crypto.x25519_load(secret("s", v))
            if s_sk.public_key().public_bytes_raw() != self._s_pk[v]:
                raise ReconstructionFailed(f"the masking key of {v!r} does not match its public key", party=v)
            xv = cfg.x_of(v)
            for u in self._survivors:
                # u added +PRG(s_uv) if u precedes v in the roster, else -PRG(s_uv): undo it.
                seed = crypto.mask_seed(s_sk, self._s_pk[u], round_id=cfg.round_id, a=u, b=v)
                masks.append((seed, -1 if cfg.x_of(u) < xv else 1))
        acc = self._running_sum
        apply_masks(acc, masks)
        self._responses = {}
        self.phase = DONE
        return AggregateResult(vector=acc, contributors=tuple(self._survivors), dropouts=tuple(self._dropouts))
