"""DP-SGD throughput: fedgov's numpy DP-SGD against Opacus on CPU PyTorch.

Run from the repository root:  .venv-bench/bin/python bench/dpsgd.py
(torch and opacus come from requirements-bench.txt; without them only fedgov is measured.)

What is measured: examples per second of DP-SGD steps with batch 256 (per-example clipping
to C=1, Gaussian noise z=1.1, plain SGD update), for multinomial logistic regression
(30 features, 2 classes) and an MLP 30-64-2 (ReLU), the same model on both sides. Measured
as /work/shared/reference/dpsgd_throughput.py measured the peer: 51,200 synthetic records,
200 steps after one warm-up step, median of 3 runs; Opacus in its default "hooks"
grad-sample mode with its batches materialised before timing and poisson_sampling=False.
fedgov runs its real training loop (``dp_sgd``) with q=1 on a 256-record slice per run, so
each of the 200 steps is exactly one batch of 256 (the loop that ``train_round`` runs,
without the sampling). A second fedgov row times ``train_round`` itself with Poisson
sampling at q=256/51,200 over all records (batch sizes vary around 256).

Before timing, one noiseless step is computed by both libraries from the same weights on
the same batch and the parameter difference is printed, to show they compute the same thing.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from federation.learning import clipped_gradient_sum, dp_sgd, init_params, train_round, unflatten  # noqa: E402

warnings.filterwarnings("ignore")
B, F, H, C, Z, LR = 256, 30, 64, 1.0, 1.1, 0.1
N_DATA = B * 200
STEPS, REPEATS = 200, 3
SPECS = {
    "logreg 30-2": {"kind": "logreg", "n_features": F, "n_classes": 2, "hidden": []},
    "MLP 30-64-2": {"kind": "mlp", "n_features": F, "n_classes": 2, "hidden": [H]},
}
RESULTS = ROOT / "bench" / "results"


def make_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N_DATA, F)).astype(np.float32)
    w_true = rng.standard_normal(F).astype(np.float32)
    y = (X @ w_true + 0.5 * rng.standard_normal(N_DATA) > 0).astype(np.int64)
    return X, y


# --- fedgov ----------------------------------------------------------------------------
def fedgov_fixed_batch(spec, X, y) -> float:
    params = init_params(spec, 3)
    dp_sgd(params, spec, X[:B], y[:B], q=1.0, z=Z, C=C, K=1, lr=LR, rng=np.random.default_rng(0))  # warm-up
    runs = []
    for rep in range(REPEATS):
        sl = slice(rep * B, (rep + 1) * B)
        t0 = time.perf_counter()
        dp_sgd(params, spec, X[sl], y[sl], q=1.0, z=Z, C=C, K=STEPS, lr=LR, rng=np.random.default_rng(rep))
        runs.append(STEPS * B / (time.perf_counter() - t0))
    return float(np.median(runs))


def fedgov_train_round(spec, X, y) -> float:
    params = init_params(spec, 3)
    q = B / N_DATA
    runs = []
    for rep in range(REPEATS):
        t0 = time.perf_counter()
        train_round(params, spec, X, y, q=q, z=Z, C=C, K=STEPS, lr=LR, seed=rep)
        runs.append(STEPS * B / (time.perf_counter() - t0))  # expected batch = q*N = 256
    return float(np.median(runs))


# --- opacus ----------------------------------------------------------------------------
def torch_model(spec):
    from torch import nn

    if spec["kind"] == "logreg":
        return nn.Linear(F, 2)
    return nn.Sequential(nn.Linear(F, H), nn.ReLU(), nn.Linear(H, 2))


def load_fedgov_weights(model, params, spec):
    """Copy fedgov's flat vector into the torch model (torch stores W as (out, in))."""
    import torch

    arrays = unflatten(params, spec)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, W, b in zip(linears, arrays[0::2], arrays[1::2]):
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))


def make_private(model, X, y, noise):
    import torch
    from opacus import PrivacyEngine

    ds = torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(y))
    dl = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=False)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt, dl = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=opt,
        data_loader=dl,
        noise_multiplier=noise,
        max_grad_norm=C,
        poisson_sampling=False,
        grad_sample_mode="hooks",
    )
    return model, opt, dl


def _opacus_run(spec, X, y) -> float:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model, opt, dl = make_private(torch_model(spec), X, y, Z)
    crit = nn.CrossEntropyLoss()
    batches = [(xb, yb) for xb, yb in dl]

    def one(xb, yb):
        opt.zero_grad()
        crit(model(xb), yb).backward()
        opt.step()

    one(*batches[0])  # warm-up
    t0 = time.perf_counter()
    for s in range(STEPS):
        one(*batches[s % len(batches)])
    return STEPS * B / (time.perf_counter() - t0)


def opacus_throughput(spec, X, y) -> float:
    return float(np.median([_opacus_run(spec, X, y) for _ in range(REPEATS)]))


def agreement(spec, X, y) -> float:
    """Max |param difference| after one noiseless clipped step from the same weights."""
    from torch import nn

    params = init_params(spec, 5)
    params += np.random.default_rng(1).standard_normal(params.shape).astype(np.float32) * 0.3
    model = torch_model(spec)
    load_fedgov_weights(model, params, spec)
    model, opt, dl = make_private(model, X[:B], y[:B], 0.0)
    xb, yb = next(iter(dl))
    opt.zero_grad()
    nn.CrossEntropyLoss()(model(xb), yb).backward()
    opt.step()
    g, _ = clipped_gradient_sum(params, spec, X[:B], y[:B], C)
    ours = params - LR * g / B
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    theirs = np.concatenate(
        [a for lin in linears for a in (lin.weight.detach().numpy().T.ravel(), lin.bias.detach().numpy().ravel())]
    )
    return float(np.max(np.abs(ours - theirs)))


def main() -> None:
    X, y = make_data()
    try:
        import opacus
        import torch
    except ImportError:
        torch = opacus = None
        print("note: torch/opacus not importable (use .venv-bench); measuring fedgov only")
    env = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"numpy {np.__version__}"
        + (f", torch {torch.__version__} ({torch.get_num_threads()} threads), opacus {opacus.__version__}" if torch else "")
    )
    print(env)
    lines = [
        "| model | fedgov step, batch 256 (ex/s) | fedgov train_round, Poisson q=256/51200 (ex/s) "
        "| Opacus hooks (ex/s) | fedgov / Opacus |",
        "|---|---|---|---|---|",
    ]
    for name, spec in SPECS.items():
        ours = fedgov_fixed_batch(spec, X, y)
        ours_round = fedgov_train_round(spec, X, y)
        if torch is not None:
            print(f"{name}: fedgov vs Opacus max |param diff| after one noiseless step = {agreement(spec, X, y):.2e}")
            theirs = opacus_throughput(spec, X, y)
            lines.append(f"| {name} | {ours:,.0f} | {ours_round:,.0f} | {theirs:,.0f} | {ours / theirs:.1f}x |")
        else:
            lines.append(f"| {name} | {ours:,.0f} | {ours_round:,.0f} | – | – |")
    text = "\n".join(lines) + (f"\n\nMedian of {REPEATS} runs x {STEPS} steps, C={C}, z={Z}, SGD lr={LR}. Machine: {env}.\n")
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dpsgd.md").write_text(text, encoding="utf-8")
    print(f"wrote {(RESULTS / 'dpsgd.md').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
