"""Models as one flat float32 vector plus a JSON spec of its shapes.

Why flat: FedAvg, quantisation and secure aggregation all work on a single vector of
numbers; keeping the parameters in that form everywhere means no (de)serialisation code
between the learning core and the protocol, and the per-layer matrices the maths needs are
zero-copy views into the vector.

Why a JSON spec: the coordinator stores the model spec of a training plan in its database
and ships it to the partner agents, so it must round-trip through ``json`` unchanged.

Both supported models are fully connected networks ending in a softmax over the classes:
multinomial logistic regression is the network with no hidden layer, the MLP has ReLU
hidden layers. One code path serves both (see ``dpsgd``). Layout of the vector: for each
layer in order, the weight matrix ``W`` of shape (fan_in, fan_out) in C order, then its bias
of shape (fan_out,).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelSpecError

KINDS = ("logreg", "mlp")
DTYPE = np.float32


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, independent of its parameter values.

    ``kind`` is ``"logreg"`` (no hidden layer; ``hidden`` must be empty) or ``"mlp"``
    (at least one hidden layer of ReLU units).
    """

    kind: str
    n_features: int
    n_classes: int
    hidden: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.kind not in KINDS:
            raise ModelSpecError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("n_features", "n_classes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ModelSpecError(f"{name} must be a positive integer, got {value!r}")
        if self.n_classes < 2:
            raise ModelSpecError(f"n_classes must be at least 2, got {self.n_classes}")
        if any(not _is_int(h) or h < 1 for h in self.hidden):
            raise ModelSpecError(f"hidden layer sizes must be positive integers, got {list(self.hidden)}")
        if self.kind == "logreg" and self.hidden:
            raise ModelSpecError("a logreg model has no hidden layers")
        if self.kind == "mlp" and not self.hidden:
            raise ModelSpecError("an mlp model needs at least one hidden layer")
        object.__setattr__(self, "n_features", int(self.n_features))
        object.__setattr__(self, "n_classes", int(self.n_classes))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    # --- JSON -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "hidden": list(self.hidden),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ModelSpecError(f"a model spec must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"kind", "n_features", "n_classes", "hidden"}
        if unknown:
            raise ModelSpecError(f"unknown model spec keys: {sorted(unknown)}")
        missing = {"kind", "n_features", "n_classes"} - set(data)
        if missing:
            raise ModelSpecError(f"model spec is missing: {sorted(missing)}")
        hidden = data.get("hidden") or ()
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ModelSpecError(f"hidden must be a list of integers, got {hidden!r}")
        return cls(
            kind=data["kind"],
            n_features=data["n_features"],
            n_classes=data["n_classes"],
            hidden=tuple(hidden),
        )

    # --- shapes ---------------------------------------------------------------------
    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (self.n_features, *self.hidden, self.n_classes)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the arrays packed in the flat vector, in order (W0, b0, W1, b1, ...)."""
        sizes = self.layer_sizes
        out: list[tuple[int, ...]] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            out.extend([(fan_in, fan_out), (fan_out,)])
        return out

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_spec(spec: ModelSpec | Mapping[str, Any]) -> ModelSpec:
    """Accept a ``ModelSpec`` or its JSON dict (as stored by the coordinator)."""
    return spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)


def init_params(spec: ModelSpec | Mapping[str, Any], seed: int) -> np.ndarray:
    """Fresh parameters, deterministic under ``seed``.

    Logistic regression starts at zero (the loss is convex, zero is the natural start).
    Hidden layers use He initialisation (suited to ReLU); biases start at zero.
    """
    spec = as_spec(spec)
    rng = np.random.default_rng(seed)
    flat = np.zeros(spec.n_params, dtype=DTYPE)
    if spec.kind == "logreg":
        return flat
    for i, (W, _b) in enumerate(layers(flat, spec)):
        fan_in = W.shape[0]
        std = math.sqrt(2.0 / fan_in) if i < len(spec.hidden) else math.sqrt(1.0 / fan_in)
        W[...] = rng.standard_normal(W.shape, dtype=np.float32) * std
    return flat


def unflatten(flat: np.ndarray, spec: ModelSpec | Mapping[str, Any]) -> list[np.ndarray]:
    """Views (not copies) of the flat vector with the spec's shapes."""
    spec = as_spec(spec)
    check_params(flat, spec)
    out, offset = [], 0
    for shape in spec.shapes:
        size = math.prod(shape)
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return out


def flatten(arrays: Sequence[np.ndarray], dtype: np.dtype = DTYPE) -> np.ndarray:
    """Inverse of ``unflatten``."""
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays])


def layers(flat: np.ndarray, spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W0, b0), (W1, b1), ...]`` as views into ``flat``."""
    arrays = unflatten(flat, spec)
    return list(zip(arrays[0::2], arrays[1::2]))


def check_params(flat: np.ndarray, spec: ModelSpec) -> None:
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        raise ModelSpecError("parameters must be one flat numpy vector")
    if flat.shape[0] != spec.n_params:
        raise ModelSpecError(f"parameter vector has {flat.shape[0]} entries, the spec needs {spec.n_params}")


def logits(params: np.ndarray, spec: ModelSpec | Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    spec = as_spec(spec)
    X = check_features(X, spec, params.dtype)
    h = X
    net = layers(params, spec)
    for i, (W, b) in enumerate(net):
        h = h @ W + b
        if i < len(net) - 1:
            np.maximum(h, 0, out=h)
    return h


def predict_proba(params: np.ndarray, spec: ModelSpec | Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    z = logits(params, spec, X)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


def predict(params: np.ndarray, spec: ModelSpec | Mapping[str, Any], X: np.ndarray) -> np.ndarray:
    """Class indices (positions in the schema's ``classes``)."""
    return logits(params, spec, X).argmax(axis=1)


def per_example_loss(params: np.ndarray, spec: ModelSpec | Mapping[str, Any], X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example; DP-SGD clips the gradient of each of these."""
    spec = as_spec(spec)
    y = check_labels(y, spec, len(X))
    z = logits(params, spec, X)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y]


def check_features(X: np.ndarray, spec: ModelSpec, dtype: np.dtype = DTYPE) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != spec.n_features:
        raise ModelSpecError(f"features must have shape (n, {spec.n_features}), got {X.shape}")
    return X.astype(dtype, copy=False)


def check_labels(y: np.ndarray, spec: ModelSpec, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ModelSpecError(f"labels must have shape ({n},), got {y.shape}")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= spec.n_classes):
        raise ModelSpecError(f"labels must be class indices in [0, {spec.n_classes})")
    return y.astype(np.intp, copy=False)
