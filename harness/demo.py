"""The demo federation: three hospitals sharing a breast-cancer screening model.

Used by `seed_demo`, `make run` and the browser tests. The data is scikit-learn's breast
cancer set, split into three non-IID partitions (one per hospital) so that the partner
agents `make run` starts have something real to train on.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HOSPITALS = (
    ("st-marys", "St Mary's Hospital"),
    ("northfield", "Northfield General"),
    ("riverside", "Riverside Clinic"),
)
PURPOSE = "breast cancer screening research"
LABEL = "diagnosis"


def breast_cancer_table() -> tuple[list[str], np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    labels = np.where(data.target == 1, "benign", "malignant")
    return names, data.data, labels


def non_iid_split(labels: np.ndarray, parts: int, *, seed: int = 7, skew: float = 0.8) -> list[np.ndarray]:
    """Split row indices into `parts` label-skewed partitions: partition i gets mostly one
    class (a Dirichlet-free, reproducible skew), as hospitals with different case mixes do."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels.tolist()))
    buckets: list[list[int]] = [[] for _ in range(parts)]
    for ci, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        # Each class leans towards partitions whose index matches its own, the rest spread out.
        weights = np.full(parts, (1 - skew) / max(parts - 1, 1))
        weights[ci % parts] = skew if parts > 1 else 1.0
        cuts = (np.cumsum(weights)[:-1] * len(idx)).astype(int)
        for p, chunk in enumerate(np.split(idx, cuts)):
            buckets[p].extend(chunk.tolist())
    return [np.array(sorted(b)) for b in buckets]


def write_partitions(out_dir: Path, parts: int = len(HOSPITALS)) -> list[Path]:
    names, X, y = breast_cancer_table()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(non_iid_split(y, parts)):
        path = out_dir / f"partition-{i + 1}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*names, LABEL])
            for row in idx:
                writer.writerow([*(f"{v:.6g}" for v in X[row]), y[row]])
        paths.append(path)
    return paths


def schema() -> dict:
    names, X, _ = breast_cancer_table()
    # Public bounds: the published ranges of the features, widened a little; declaring them
    # costs no privacy because they describe the measurement, not any patient.
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = (hi - lo) * 0.05
    return {
        "feature_names": names,
        "label_name": LABEL,
        "label_classes": ["benign", "malignant"],
        "feature_bounds": [[float(a), float(b)] for a, b in zip(lo - pad, hi + pad)],
    }
