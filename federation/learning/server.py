"""Server-side optimisers applied to the securely aggregated update (FedOpt, Reddi et al. 2021).

Why: the coordinator only ever sees the weighted average of the partners' updates, and what
it does with that average is post-processing of DP outputs, so it costs no privacy. Plain
FedAvg adds the average to the model (``server_lr * update``). Under label skew each partner's
local steps pull towards its own optimum and the average of those pulls changes direction
from round to round; a server momentum (FedAvgM) or an adaptive per-coordinate step (FedAdam)
treats ``-update`` as a pseudo-gradient and smooths it across rounds.

The optimiser's state (momentum, second moments) must persist between rounds: it is a flat
float32 vector (``state_to_bytes`` / ``state_from_bytes``) stored with the model version it
belongs to.

* ``fedavg``:   x <- x + lr * u                                        (no state)
* ``momentum``: v <- beta1 * v + u;  x <- x + lr * v                   (state: v)
* ``adam``:     m <- beta1 m + (1 - beta1) u;  s <- beta2 s + (1 - beta2) u^2;
                x <- x + lr * m / (sqrt(s) + tau)                       (state: m, s)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import LearningError

SERVER_OPTIMIZERS = ("fedavg", "momentum", "adam")


@dataclass(frozen=True)
class ServerOptimizer:
    kind: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise LearningError(f"server optimiser must be one of {SERVER_OPTIMIZERS}, got {self.kind!r}")
        for name in ("lr", "tau"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise LearningError(f"server optimiser {name} must be a finite number > 0, got {value!r}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise LearningError(f"server optimiser {name} must be in [0, 1), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ServerOptimizer:
        """``None`` or ``{}`` is plain FedAvg with server lr 1."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise LearningError(f"a server optimiser is a mapping, got {type(data).__name__}")
        unknown = set(data) - {"kind", "lr", "beta1", "beta2", "tau"}
        if unknown:
            raise LearningError(f"unknown server optimiser keys: {sorted(unknown)}")
        return cls(**data)

    def state_size(self, n_params: int) -> int:
        return {"fedavg": 0, "momentum": n_params, "adam": 2 * n_params}[self.kind]


def state_to_bytes(state: np.ndarray | None) -> bytes:
    return b"" if state is None else np.asarray(state, dtype=np.float32).tobytes()


def state_from_bytes(data: bytes | None) -> np.ndarray | None:
    if not data:
        return None
    return np.frombuffer(bytes(data), dtype=np.float32).copy()


def server_step(
    params: np.ndarray, update: np.ndarray, opt: ServerOptimizer, state: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """New global parameters and optimiser state from the aggregated update.

    ``state=None`` starts from zero (the first round, or a model version stored before the
    plan had a server optimiser). Inputs are not modified.
    """
    g = np.asarray(params, dtype=np.float32)
    u = np.asarray(update, dtype=np.float32)
    if u.shape != g.shape:
        raise LearningError(f"update has shape {u.shape}, parameters {g.shape}")
    if not np.all(np.isfinite(u)):
        raise LearningError("aggregated update has NaN or infinite entries")
    n = g.shape[0]
    size = opt.state_size(n)
    if state is None or size == 0:
        state = np.zeros(size, dtype=np.float32)
    else:
        state = np.asarray(state, dtype=np.float32).copy()
        if state.shape != (size,):
            raise LearningError(f"server optimiser state has {state.shape[0]} entries, {opt.kind} needs {size}")
    lr = np.float32(opt.lr)
    if opt.kind == "fedavg":
        return (g + lr * u).astype(np.float32), None
    if opt.kind == "momentum":
        state *= np.float32(opt.beta1)
        state += u
        return (g + lr * state).astype(np.float32), state
    m, s = state[:n], state[n:]
    m *= np.float32(opt.beta1)
    m += np.float32(1 - opt.beta1) * u
    s *= np.float32(opt.beta2)
    s += np.float32(1 - opt.beta2) * u * u
    return (g + lr * m / (np.sqrt(s) + np.float32(opt.tau))).astype(np.float32), state
