"""Shared test data for the learning core (a module, not a conftest, so these tests also run
with --noconftest, without the Django fixtures of tests/conftest.py)."""

import numpy as np
import pytest

LOGREG = {"kind": "logreg", "n_features": 5, "n_classes": 3, "hidden": []}
MLP = {"kind": "mlp", "n_features": 5, "n_classes": 3, "hidden": [7, 4]}

both_models = pytest.mark.parametrize("spec", [LOGREG, MLP], ids=["logreg", "mlp"])


def blobs(n: int, n_features: int, seed: int, gap: float = 0.6):
    """Two well-separated classes in [0, 1]^d (what a scaled CSV looks like)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centre = np.where(y[:, None] == 1, 0.5 + gap / 2, 0.5 - gap / 2)
    X = np.clip(centre + 0.08 * rng.standard_normal((n, n_features)), 0, 1)
    return X.astype(np.float32), y
