"""What both apps share: fedgov's numpy learning code (the same DP-SGD the fedgov agent runs)
and the run's model spec."""

from __future__ import annotations

import sys


def learning(run_config):
    """fedgov's federation.learning (numpy only), from the checkout named in the run config."""
    root = str(run_config["fedgov-root"])
    if root not in sys.path:
        sys.path.insert(0, root)
    from federation import learning as fl

    return fl


def spec(run_config) -> dict:
    hidden = [int(h) for h in str(run_config["hidden"]).split(",") if h]
    kind = "mlp" if hidden else "logreg"
    return {"kind": kind, "n_features": int(run_config["n-features"]), "n_classes": int(run_config["n-classes"]), "hidden": hidden}
