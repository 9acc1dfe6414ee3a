"""The coordinator's secure-aggregation state as it is stored between Celery tasks.

`SecAggServer` (federation/secagg/server.py) runs the protocol; this mixin turns its state
into plain JSON-able data and back (`to_dict` / `from_dict`, the running sum apart as raw
bytes), and gives a server saved without its contributions (`to_dict(contributions=False)`)
back the contributions its caller stored one record per sender (`restore_contributions`).
See server.py's module doc for the whole cycle. No Django.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from . import shamir
from .errors import BadLength, MalformedMessage
from .messages import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    PARTY_RE,
    SEALED_SHARES_BYTES,
    SHARE_KEYS,
    UNMASK_RESPONSE,
    VERSION,
    RoundConfig,
    b64d,
    encode_json,
)
from .prg import WORD

# Server phases are named after the client message type they collect.
CLIENT_TYPES = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT, UNMASK_RESPONSE)


@dataclass(frozen=True)
class Contribution:
    """What one accepted ShareKeys or UnmaskResponse message adds to the state, as JSON-able
    ``data`` (``{recipient: sealed shares b64}``, or ``{"b"|"s": {party: y hex}}``), for a
    caller that stores contributions apart from the state (see ``to_dict(contributions=False)``)."""

    phase: str
    sender: str
    data: dict


# The phases whose messages leave an O(n) contribution per sender (O(n^2) in all).
CONTRIBUTION_PHASES = (SHARE_KEYS, UNMASK_RESPONSE)


class StoredState:
    """Persistence of `SecAggServer`: its state as JSON-able data, and back."""

    def to_dict(self, *, contributions: bool = True) -> dict:
        """JSON-able state without the running sum (see ``running_sum_bytes``).

        With ``contributions=False`` the accepted ShareKeys and UnmaskResponse contributions
        are left out (the caller stored each ``Contribution`` that ``receive_*`` returned):
        the state is then O(n) and ``from_dict`` gives a detached server."""
        if contributions and self._detached:
            raise ValueError("a detached server does not hold the contributions: restore them first")
        state = {
            "v": VERSION,
            "config": self.config.to_dict(),
            "identity_keys": {p: k.hex() for p, k in self._identity_keys.items()},
            "phase": self.phase,
            "nonces": self._nonces,
            "advertised": self._advertised,
            "s_pk": {p: k.hex() for p, k in self._s_pk.items()},
            "cts": self._cts,
            "u2": self._u2,
            "u3": self._u3,
            "survivors": self._survivors,
            "dropouts": self._dropouts,
            "responses": {r: responses_out(parsed) for r, parsed in self._responses.items()},
            "has_running_sum": self._running_sum is not None,
        }
        if not contributions:
            del state["cts"], state["responses"]
            state["detached"] = True
        return state

    def running_sum_bytes(self) -> bytes | None:
        """The running sum as d little-endian uint32 words, or None before MaskedInput."""
        return None if self._running_sum is None else self._running_sum.astype(WORD, copy=False).tobytes()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, running_sum: bytes | np.ndarray | None = None) -> Self:
        if data.get("v") != VERSION:
            raise MalformedMessage("unsupported server state version")
        config = RoundConfig.from_dict(data["config"])
        obj = cls(config, identity_keys={p: bytes.fromhex(k) for p, k in data["identity_keys"].items()})
        obj.phase = data["phase"]
        obj._nonces = {t: dict(data["nonces"].get(t, {})) for t in CLIENT_TYPES}
        obj._advertised = {p: dict(e) for p, e in data["advertised"].items()}
        obj._s_pk = {p: bytes.fromhex(k) for p, k in data["s_pk"].items()}
        obj._u2, obj._u3 = list(data["u2"]), list(data["u3"])
        obj._survivors, obj._dropouts = list(data["survivors"]), list(data["dropouts"])
        obj._detached = bool(data.get("detached", False))
        if not obj._detached:
            obj._cts = {u: dict(c) for u, c in data["cts"].items()}
            obj._responses = {r: responses_in(parsed) for r, parsed in data["responses"].items()}
        if data["has_running_sum"]:
            if running_sum is None:
                raise ValueError("this state has a running sum: pass running_sum=")
            if isinstance(running_sum, np.ndarray):
                acc = np.array(running_sum, dtype=np.uint32)  # a private copy
            else:
                acc = np.frombuffer(running_sum, dtype=WORD).astype(np.uint32)  # copy: writable
            if acc.shape != (config.vector_length,):
                raise BadLength("running sum length does not match the round", expected=config.vector_length, got=acc.size)
            obj._running_sum = acc
        if any(not PARTY_RE.match(p) for p in obj._u2):
            raise MalformedMessage("bad party id in state")
        return obj

    @property
    def detached(self) -> bool:
        """Restored from a state saved without contributions, and not restored since."""
        return self._detached

    def restore_contributions(self, contributions: Mapping[str, Mapping[str, Any]]) -> None:
        """Give a detached server back the current phase's contributions, ``{sender: data}``
        as returned in ``Contribution.data``, before ``close_share_keys`` or ``finalize``.

        They must come from exactly the senders whose message this state accepted: anything
        else means the store and the state disagree, and closing on it would relay or
        reconstruct from the wrong shares (``ValueError``). Each is checked again against
        the state (recipients, sizes, field elements), since it comes back from storage.
        """
        if not self._detached:
            raise ValueError("this server already holds its contributions")
        accepted = set(self._nonces[self.phase]) if self.phase in CONTRIBUTION_PHASES else set()
        if set(contributions) != accepted:
            raise ValueError(
                f"stored contributions {sorted(contributions)} do not match the senders accepted in {self.phase!r}: {sorted(accepted)}"
            )
        cts: dict[str, dict[str, str]] = {}
        responses: dict[str, dict[str, dict[str, int]]] = {}
        for sender in sorted(contributions):
            data = contributions[sender]
            if self.phase == SHARE_KEYS:
                if set(data) != set(self._s_pk) - {sender}:
                    raise ValueError(f"the stored shares of {sender!r} are not addressed to the other members of U1")
                for ct in data.values():
                    b64d(ct, length=SEALED_SHARES_BYTES, what="ct")
                cts[sender] = {v: str(ct) for v, ct in data.items()}
            else:
                parsed = responses_in(data)  # key order is not kept by every JSON store (jsonb): compare sets
                if set(parsed) != {"b", "s"} or set(parsed["b"]) != set(self._survivors) or set(parsed["s"]) != set(self._dropouts):
                    raise ValueError(f"the stored unmask response of {sender!r} does not list the survivors and dropouts")
                if any(y >= shamir.PRIME for shares in parsed.values() for y in shares.values()):
                    raise ValueError(f"the stored unmask response of {sender!r} holds a value that is not a field element")
                responses[sender] = parsed
        self._cts, self._responses = cts, responses
        self._detached = False

    def _require_contributions(self) -> None:
        if self._detached:
            raise ValueError("this server was restored without its contributions: call restore_contributions() first")

    def to_bytes(self) -> bytes:
        """``to_dict`` as canonical JSON bytes (the running sum is not included)."""
        return encode_json(self.to_dict())

    @classmethod
    def from_bytes(cls, state: bytes, *, running_sum: bytes | np.ndarray | None = None) -> Self:
        return cls.from_dict(json.loads(state), running_sum=running_sum)



def responses_out(parsed: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
    return {k: {p: format(y, "x") for p, y in shares.items()} for k, shares in parsed.items()}


def responses_in(data: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, int]]:
    return {k: {p: int(y, 16) for p, y in shares.items()} for k, shares in data.items()}
