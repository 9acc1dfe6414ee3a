"""ServerApp: FedAvg through SecAgg+ (flwr.server.workflow.SecAggPlusWorkflow) and a federated
evaluation every round; writes when each round starts and ends to <out-dir>/rounds.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_evaluate_workflow

from .common import learning, spec

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    fl = learning(rc)
    params = fl.init_params(spec(rc), seed=int(rc["seed"]))
    n = int(rc["partners"])
    out = Path(str(rc["out-dir"])) / "rounds.jsonl"
    strategy = FedAvg(
        fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=1.0, min_evaluate_clients=n,
        initial_parameters=ndarrays_to_parameters([params]),
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(rc["num-server-rounds"])), strategy=strategy)
    secagg = SecAggPlusWorkflow(
        num_shares=int(rc["num-shares"]), reconstruction_threshold=int(rc["reconstruction-threshold"]), max_weight=float(rc["max-weight"]),
    )
    started: dict = {}

    def fit(grid, ctx):
        started["t"] = time.time()
        secagg(grid, ctx)
        started["fit_end"] = time.time()

    def evaluate(grid, ctx):
        default_evaluate_workflow(grid, ctx)
        with out.open("a") as fh:
            fh.write(json.dumps({"start": started["t"], "fit_end": started["fit_end"], "end": time.time()}) + "\n")

    DefaultWorkflow(fit_workflow=fit, evaluate_workflow=evaluate)(grid, legacy)
