"""ClientApp behind secaggplus_mod: K DP-SGD steps with fedgov's own numpy code (Poisson
sampling at rate q, per-example clipping to C, Gaussian noise z*C, learning rate and momentum
as the fedgov plan runs them) on the partition fedgov's agent trains on, then the new
parameters go through SecAgg+; evaluation is accuracy on the agent's held-out split.
Each call appends its CPU time to <out-dir>/clients.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context

from .common import learning, spec


class Partner(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.rc = context.run_config
        self.fl = learning(self.rc)
        self.spec = spec(self.rc)
        data = np.load(str(context.node_config["data-file"]))
        self.X, self.y, self.Xe, self.ye = data["X_train"], data["y_train"], data["X_eval"], data["y_eval"]
        self.out = Path(str(self.rc["out-dir"])) / "clients.jsonl"

    def _log(self, kind: str, cpu: float) -> None:
        with self.out.open("a") as fh:
            fh.write(json.dumps({"kind": kind, "cpu": cpu, "time": time.time()}) + "\n")

    def fit(self, parameters, config):
        t0 = time.process_time()
        rc = self.rc
        new, _ = self.fl.dp_sgd(
            np.asarray(parameters[0], dtype=np.float32), self.spec, self.X, self.y,
            q=float(rc["sampling-rate"]), z=float(rc["noise-multiplier"]), C=float(rc["clip-norm"]), K=int(rc["local-steps"]),
            lr=float(rc["learning-rate"]), momentum=float(rc["momentum"]),
        )
        self._log("fit", time.process_time() - t0)
        return [new], len(self.X), {}

    def evaluate(self, parameters, config):
        t0 = time.process_time()
        params = np.asarray(parameters[0], dtype=np.float32)
        accuracy = float(np.mean(self.fl.predict(params, self.spec, self.Xe) == self.ye)) if len(self.ye) else 0.0
        loss = float(np.mean(self.fl.per_example_loss(params, self.spec, self.Xe, self.ye))) if len(self.ye) else 0.0
        self._log("evaluate", time.process_time() - t0)
        return loss, len(self.ye), {"accuracy": accuracy}


def client_fn(context: Context):
    return Partner(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
