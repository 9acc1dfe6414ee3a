"""A partner's CSV, read against the dataset's declared schema.

Why the schema carries public bounds: features are min-max scaled into [0, 1] with bounds
[lo, hi] that the partner *declares* (public metadata the coordinator already holds), not
with the column's observed min and max. Scaling from the data would be a release about
the data that no budget pays for; scaling from declared bounds costs no privacy. Values
outside the bounds are clipped into them.

Why an optional per-feature transform: min-max scaling keeps a heavy-tailed feature's
shape, so most records of, say, a tumour's area land in a sliver of [0, 1] near 0 and a
linear model needs large weights (hard to learn under clipping and noise) to use them. A
schema may declare ``transforms = {"area": "log1p"}``: the value is clipped into its raw
bounds, then transformed, then min-max scaled with the *transformed* bounds. The transform
is public metadata like the bounds, chosen without looking at the records, so it costs no
privacy either. Bounds stay declared in the units of the CSV.

Why optionally centred: with every input in [0, 1] the inputs share a large common
component, which makes the loss surface of a linear model badly conditioned (LeCun et al.,
"Efficient BackProp", 1998): gradient steps mostly move along that direction, and under
DP-SGD's clipping and noise the other directions converge too slowly to be learned. A
schema may declare ``centred = True`` to map each feature onto [-1, 1] instead (the middle
of its declared range goes to 0). It is a fixed affine map of public metadata, so it costs
no privacy either.

A schema with neither transforms nor centring behaves exactly as before.

Why strict loading: a round charges the privacy budget of the dataset whatever the data
looks like, so a CSV that does not match the declaration must fail before training, with
the row and column named so the partner can fix it, and never half-load.

``schema_from_csv`` derives a schema *from* a file (bounds = observed min/max). That is a
stand-in for the metadata a partner would declare, used by ``manage.py simulate``; it is
not private and must not be used on real partner data.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from .errors import DataError

PathOrFile = str | os.PathLike[str] | IO[str]


#: Transforms a schema may declare for a feature: name -> (function, smallest declared
#: lower bound allowed, so the function is defined on every clipped value; None: any).
TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float | None]] = {
    "none": (lambda v: v, None),
    "log1p": (np.log1p, 0.0),
    "sqrt": (np.sqrt, 0.0),
}
UNKNOWN_TRANSFORM = "unknown transform {name!r}; known: {known}"
TRANSFORM_NEEDS_NONNEGATIVE = "transform {name!r} needs a lower bound >= 0 (the values must be >= 0), got {lo}"
TRANSFORM_OF_UNKNOWN_FEATURE = "a transform is declared for a column that is not a feature"


@dataclass(frozen=True)
class Schema:
    """Declared shape of a dataset: ``features`` in model order, the ``label`` column,
    the label ``classes`` (their order defines class indices), per-feature ``bounds``
    ``[[lo, hi], ...]`` aligned with ``features`` (in the CSV's units), and optional
    ``transforms``, ``{feature: name}`` with a name from ``TRANSFORMS``, for the features
    that are transformed before scaling, and ``centred`` to scale into [-1, 1] instead of
    [0, 1] (see the module docstring).

    ``transforms`` is stored as ``((feature, name), ...)`` in feature order without the
    ``"none"`` entries, so equal declarations compare (and hash) equal.
    """

    features: tuple[str, ...]
    label: str
    classes: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...] = field(repr=False)
    transforms: Mapping[str, str] | tuple[tuple[str, str], ...] = field(default=(), repr=False)
    centred: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(str(f).strip() for f in self.features))
        object.__setattr__(self, "classes", tuple(str(c).strip() for c in self.classes))
        object.__setattr__(self, "label", str(self.label).strip())
        try:
            bounds = tuple((float(lo), float(hi)) for lo, hi in self.bounds)
        except (TypeError, ValueError):
            raise DataError("bounds must be a list of [lo, hi] number pairs") from None
        object.__setattr__(self, "bounds", bounds)
        if not self.features:
            raise DataError("a schema needs at least one feature")
        if len(set(self.features)) != len(self.features):
            raise DataError("feature names must be distinct")
        if self.label in self.features:
            raise DataError("the label column cannot also be a feature", column=self.label)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DataError("a schema needs at least two distinct label classes")
        if len(bounds) != len(self.features):
            raise DataError(f"{len(self.features)} features but {len(bounds)} bounds")
        for name, (lo, hi) in zip(self.features, bounds):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise DataError(f"bounds must be finite with lo <= hi, got [{lo}, {hi}]", column=name)
        object.__setattr__(self, "transforms", self._normalise_transforms(self.transforms))
        if not isinstance(self.centred, (bool, np.bool_)):
            raise DataError(f"centred must be true or false, got {self.centred!r}")
        object.__setattr__(self, "centred", bool(self.centred))

    def _normalise_transforms(self, declared: Any) -> tuple[tuple[str, str], ...]:
        if declared is None:
            return ()
        try:
            pairs = dict(declared.items() if isinstance(declared, Mapping) else declared)
        except (TypeError, ValueError):
            raise DataError("transforms must map feature names to transform names") from None
        pairs = {str(f).strip(): t for f, t in pairs.items()}
        for name in pairs:
            if name not in self.features:
                raise DataError(TRANSFORM_OF_UNKNOWN_FEATURE, column=name)
        out = []
        for name, (lo, _hi) in zip(self.features, self.bounds):
            transform = pairs.get(name, "none")
            if not isinstance(transform, str) or transform.strip() not in TRANSFORMS:
                raise DataError(UNKNOWN_TRANSFORM.format(name=transform, known=sorted(TRANSFORMS)), column=name)
            transform = transform.strip()
            min_lo = TRANSFORMS[transform][1]
            if min_lo is not None and lo < min_lo:
                raise DataError(TRANSFORM_NEEDS_NONNEGATIVE.format(name=transform, lo=lo), column=name)
            if transform != "none":
                out.append((name, transform))
        return tuple(out)

    def transform_of(self, feature: str) -> str:
        """The declared transform of ``feature`` (``"none"`` when there is none)."""
        return dict(self.transforms).get(feature, "none")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "features": list(self.features),
            "label": self.label,
            "classes": list(self.classes),
            "bounds": [[lo, hi] for lo, hi in self.bounds],
        }
        # Absent rather than empty/false, so schemas without them keep their old JSON.
        if self.transforms:
            out["transforms"] = dict(self.transforms)
        if self.centred:
            out["centred"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        missing = {"features", "label", "classes", "bounds"} - set(data)
        if missing:
            raise DataError(f"schema is missing: {sorted(missing)}")
        return cls(
            features=tuple(data["features"]),
            label=data["label"],
            classes=tuple(data["classes"]),
            bounds=tuple(tuple(b) for b in data["bounds"]),
            transforms=data.get("transforms") or (),
            centred=False if data.get("centred") is None else data["centred"],
        )

    @classmethod
    def from_declaration(cls, declared: Mapping[str, Any]) -> Schema:
        """A dataset's declared schema as the coordinator hands it out (``feature_names``,
        ``label_name``, ``label_classes``, ``feature_bounds``, and optionally
        ``feature_transforms`` and ``centred``): what the partner loads its CSV with, and
        what anyone scoring the global model must scale held-out records with."""
        return cls.from_dict(
            {
                "features": declared["feature_names"],
                "label": declared["label_name"],
                "classes": declared["label_classes"],
                "bounds": declared["feature_bounds"],
                "transforms": declared.get("feature_transforms") or {},
                "centred": bool(declared.get("centred", False)),
            }
        )

    def model_spec(self, kind: str = "logreg", hidden: Sequence[int] = ()) -> dict[str, Any]:
        """The JSON model spec that fits this schema."""
        return {"kind": kind, "n_features": self.n_features, "n_classes": self.n_classes, "hidden": list(hidden)}

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """Clip raw feature values into the declared bounds, apply each feature's declared
        transform (to the values and to the bounds), then map them to [0, 1], or to [-1, 1]
        when the schema is ``centred``."""
        lo = np.array([b[0] for b in self.bounds])
        hi = np.array([b[1] for b in self.bounds])
        values = np.clip(raw, lo, hi)  # a new float64 array (lo, hi are float64)
        for feature, transform in self.transforms:
            j = self.features.index(feature)
            fn = TRANSFORMS[transform][0]
            values[..., j] = fn(values[..., j])
            lo[j], hi[j] = fn(lo[j]), fn(hi[j])
        span = hi - lo
        # A constant feature (lo == hi) carries no information: map it to 0.
        safe = np.where(span > 0, span, 1.0)
        unit = (values - lo) / safe
        if self.centred:
            unit = np.where(span > 0, 2.0 * unit - 1.0, 0.0)
        return unit.astype(np.float32)


def _open(source: PathOrFile):
    if isinstance(source, (str, os.PathLike)):
        return open(source, newline="", encoding="utf-8-sig")
    return _NoClose(source)


class _NoClose:
    """Context manager that leaves a caller's file object open."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f

    def __enter__(self) -> IO[str]:
        return self.f

    def __exit__(self, *exc: object) -> None:
        return None


def _read_header(reader) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("the file is empty (no header row)") from None
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", row=reader.line_num) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError("the header row is empty", row=1)
    seen = set()
    for h in header:
        if h in seen:
            raise DataError("duplicate column in the header", row=1, column=h)
        seen.add(h)
    return header


def _parse_number(text: str, row: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"not a number: {text.strip()!r}", row=row, column=column) from None
    if not math.isfinite(value):
        raise DataError(f"not a finite number: {text.strip()!r}", row=row, column=column)
    return value


def _rows(reader, header: list[str]):
    """Yield (row number, fields) for every non-blank data row; refuse ragged rows."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"malformed CSV: {e}", row=reader.line_num) from None
        if not fields or all(not f.strip() for f in fields):
            continue  # blank lines (a trailing newline, say) are not records
        if len(fields) != len(header):
            raise DataError(f"expected {len(header)} fields, found {len(fields)}", row=reader.line_num)
        yield reader.line_num, fields


def load_csv(source: PathOrFile, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Read ``source`` against ``schema``: ``(X float32 scaled to [0, 1], or [-1, 1] if centred; y int64 class indices)``.

    Columns not in the schema (an id column, say) are ignored. Label values are compared
    with the declared classes as strings after stripping whitespace, so ``1`` in the file
    matches class ``"1"``. Raises ``DataError`` naming the row (header = row 1) and column
    for a missing column, a non-numeric or non-finite feature, a label outside the classes,
    a ragged row, or a file with no data rows. Nothing is returned partially.
    """
    class_index = {c: i for i, c in enumerate(schema.classes)}
    with _open(source) as f:
        reader = csv.reader(f)
        header = _read_header(reader)
        position = {h: i for i, h in enumerate(header)}
        for column in (*schema.features, schema.label):
            if column not in position:
                raise DataError("missing column declared by the schema", row=1, column=column)
        feature_pos = [position[c] for c in schema.features]
        label_pos = position[schema.label]
        raw_rows: list[list[float]] = []
        labels: list[int] = []
        for row, fields in _rows(reader, header):
            raw_rows.append([_parse_number(fields[p], row, c) for p, c in zip(feature_pos, schema.features)])
            value = fields[label_pos].strip()
            if value not in class_index:
                raise DataError(
                    f"label {value!r} is not one of the declared classes {list(schema.classes)}",
                    row=row,
                    column=schema.label,
                )
            labels.append(class_index[value])
    if not raw_rows:
        raise DataError("the file has a header but no data rows")
    X = schema.scale(np.asarray(raw_rows, dtype=np.float64))
    return X, np.asarray(labels, dtype=np.int64)


def schema_from_csv(source: PathOrFile, label: str) -> Schema:
    """Derive a schema from a file: every other column is a feature, classes are the sorted
    distinct labels (numerically when all are numbers), bounds are each column's min/max.

    A stand-in for declared metadata (see the module docstring): it looks at the data.
    """
    label = label.strip()
    with _open(source) as f:
        reader = csv.reader(f)
        header = _read_header(reader)
        if label not in header:
            raise DataError("label column not in the file", row=1, column=label)
        features = [h for h in header if h != label]
        if not features:
            raise DataError("the file has no feature columns besides the label", row=1)
        label_pos = header.index(label)
        feature_pos = [header.index(c) for c in features]
        lo = np.full(len(features), np.inf)
        hi = np.full(len(features), -np.inf)
        seen: set[str] = set()
        n = 0
        for row, fields in _rows(reader, header):
            values = np.array([_parse_number(fields[p], row, c) for p, c in zip(feature_pos, features)])
            np.minimum(lo, values, out=lo)
            np.maximum(hi, values, out=hi)
            value = fields[label_pos].strip()
            if not value:
                raise DataError("empty label", row=row, column=label)
            seen.add(value)
            n += 1
    if n == 0:
        raise DataError("the file has a header but no data rows")
    return Schema(
        features=tuple(features),
        label=label,
        classes=tuple(_sort_classes(seen)),
        bounds=tuple(zip(lo.tolist(), hi.tolist())),
    )


def _sort_classes(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def train_eval_split(
    X: np.ndarray, y: np.ndarray, *, eval_fraction: float = 0.2, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded shuffle then split into ``(X_train, y_train, X_eval, y_eval)``.

    The evaluation part is held out from DP-SGD; only noisy counts about it may leave the
    partner (``evaluation.release_evaluation``). ``eval_fraction=0`` keeps everything for
    training.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(X)
    if len(y) != n:
        raise ValueError("X and y have different lengths")
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * eval_fraction))
    ev, tr = order[:n_eval], order[n_eval:]
    return X[tr], y[tr], X[ev], y[ev]


def write_csv(path: PathOrFile, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Small helper for simulations and tests: write a header and rows."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "w", newline="", encoding="utf-8") as f:
            _write(f, header, rows)
    else:
        _write(path, header, rows)


def _write(f: IO[str], header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


__all__ = ["TRANSFORMS", "Schema", "load_csv", "schema_from_csv", "train_eval_split", "write_csv"]
