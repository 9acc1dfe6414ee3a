"""Orchestration overhead per round: wall time minus the partners' own compute.

Runs the real stack (Redis, gunicorn, a Celery worker and beat) with N partner agents
talking HTTP on loopback; the agents run as threads of this process so that 50 of them fit
on a 2-core machine, and each records the time it spends computing (training, masking,
unmasking, evaluating). The model is small (logistic regression, 30 features), so what is
measured is fedgov: governance re-checks, budget reservation and commit, four secure
aggregation phases relayed through the coordinator, unmasking, FedAvg and the evaluation
phase. Usage: python bench/rounds.py [--partners 3,10,50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VAR = Path(tempfile.mkdtemp(prefix="fedgov-bench-rounds-"))
os.environ.setdefault("FEDGOV_VAR_DIR", str(VAR))
os.environ["DATABASE_URL"] = f"sqlite:///{VAR / 'bench.sqlite3'}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from federation import simulation  # noqa: E402
from federation.agent.runner import Agent, AgentConfig  # noqa: E402
from federation.localstack import local_stack  # noqa: E402
from federation.services.rounds import round_request  # noqa: E402


class TimedAgent(Agent):
    """An agent that adds up the time its handlers spend, i.e. the partner's compute plus
    excluding the time its messages spend being posted (the coordinator's side)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.busy = 0.0

    def handle(self, task):
        t0 = time.perf_counter()
        super().handle(task)
        self.busy += time.perf_counter() - t0

    def _send(self, *a, **kw):  # time on the wire is the coordinator's, not the partner's
        t0 = time.perf_counter()
        super()._send(*a, **kw)
        self.busy -= time.perf_counter() - t0


def run(n: int, rounds: int, work: Path) -> dict:
    table = simulation.default_table()
    if n > 10:  # enough records for 50 partitions: repeat the table
        table = simulation.Table(table.header, table.label, table.rows * (n // 10 + 1))
    parts = simulation.partition(table, n, work / f"data-{n}")
    table.write(work / f"all-{n}.csv")
    schema = simulation.schema_for(table, work / f"all-{n}.csv")
    fed = simulation.setup_federation(partitions=parts, schema=schema, epsilon=50.0, rounds=rounds, phase_timeout=120)
    with local_stack(log_dir=work / f"logs-{n}") as stack:
        agents = [
            TimedAgent(AgentConfig(server=stack.server, token=tok, data=parts[i], state_dir=work / f"agents-{n}" / slug, poll_wait=5))
            for i, (slug, tok) in enumerate(fed.tokens.items())
        ]
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        simulation.wait_for_agents(fed, timeout=120)
        for a in agents:
            a.busy = 0.0
        round_request(actor=fed.admin, plan=fed.plan)
        plan = simulation.wait_for_plan(fed.plan, timeout=900, poll=0.05)
        for a in agents:
            a.stop()
    done = [r for r in plan.rounds.order_by("number") if r.status == "completed"]
    walls = [(r.finished_at - r.requested_at).total_seconds() for r in done]
    busy = sum(a.busy for a in agents) / max(1, len(done))
    # Partners work in parallel at their sites; here they share 2 cores, so their compute
    # per round is at least busy/2 wall seconds. Subtract the larger of that and the
    # slowest partner's share.
    slowest = max(a.busy for a in agents) / max(1, len(done))
    compute = max(slowest, busy / 2)
    wall = sum(walls) / max(1, len(walls))
    return {"n": n, "rounds": len(done), "wall": wall, "compute": compute, "overhead": wall - compute}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partners", default="3,10,50")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    rows = [run(int(n), args.rounds, VAR) for n in args.partners.split(",")]
    lines = [
        f"Orchestration overhead per round (logistic regression, 30 features; {os.cpu_count()} cores; SQLite; mean of {args.rounds} rounds)",
        "",
        "| partners | wall per round (s) | partners' compute (s) | overhead (s) | overhead per partner (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['wall']:.3f} | {r['compute']:.3f} | {r['overhead']:.3f} | {1000 * r['overhead'] / r['n']:.1f} |")
    lines += ["", "Target: under 0.5 s per round at 3 partners, growing no worse than linearly in partners."]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "rounds.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
