"""Orchestration overhead per round: wall time minus the partners' own compute.

Runs the real stack (Redis, gunicorn, a Celery worker and beat) with N partner agents
talking HTTP on loopback; the agents run as threads of this process so that 50 of them fit
on a 2-core machine, and each records the time it spends computing (training, masking,
unmasking, evaluating). The model is small (logistic regression, 30 features), so what is
measured is fedgov: governance re-checks, budget reservation and commit, four secure
aggregation phases relayed through the coordinator, unmasking, FedAvg and the evaluation
phase.

The first round of each run is reported on its own and left out of the mean: it pays the
one-time costs of freshly started processes (this process's first connection to the broker,
a worker's first task, the web server's first requests), which a running coordinator paid
long ago. The mean is over the --rounds rounds that follow it.

Usage: python bench/rounds.py [--partners 3,10,50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
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

from federation.agent.config import AgentConfig  # noqa: E402
from federation.agent.runner import Agent  # noqa: E402
from federation.services.rounds import round_request  # noqa: E402
from harness import simulation  # noqa: E402
from harness.localstack import local_stack  # noqa: E402


class TimedAgent(Agent):
    """An agent that adds up the CPU time its handlers spend, i.e. the partner's compute,
    excluding the time its messages spend being posted (the coordinator's side).

    CPU time of the agent's own thread, not wall time: the agents are threads of one process
    here, and with 50 of them a handler's wall time is mostly waiting for the GIL while the
    other 49 compute, which would count every partner's compute fifty times over."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.busy: dict[int, float] = defaultdict(float)  # round id -> CPU seconds

    def handle(self, task):
        t0 = time.thread_time()
        super().handle(task)
        self.busy[task["round"]] += time.thread_time() - t0

    def _send(self, round_pk, *a, **kw):  # time on the wire is the coordinator's, not the partner's
        t0 = time.thread_time()
        super()._send(round_pk, *a, **kw)
        self.busy[round_pk] -= time.thread_time() - t0


def run(n: int, rounds: int, work: Path) -> dict:
    table = simulation.default_table()
    if n > 10:  # enough records for 50 partitions: repeat the table
        table = simulation.Table(table.header, table.label, table.rows * (n // 10 + 1))
    parts = simulation.partition(table, n, work / f"data-{n}")
    table.write(work / f"all-{n}.csv")
    schema = simulation.schema_for(table, work / f"all-{n}.csv")
    fed = simulation.setup_federation(partitions=parts, schema=schema, epsilon=50.0, rounds=rounds + 1, phase_timeout=120)
    with local_stack(log_dir=work / f"logs-{n}") as stack:
        agents = [
            TimedAgent(AgentConfig(server=stack.server, token=tok, data=parts[i], state_dir=work / f"agents-{n}" / slug, poll_wait=5))
            for i, (slug, tok) in enumerate(fed.tokens.items())
        ]
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        simulation.wait_for_agents(fed, timeout=120)
        round_request(actor=fed.admin, plan=fed.plan)
        plan = simulation.wait_for_plan(fed.plan, timeout=900, poll=0.05)
        for a in agents:
            a.stop()
    done = [r for r in plan.rounds.order_by("number") if r.status == "completed"]
    if len(done) != rounds + 1:
        sys.exit(f"{n} partners: {len(done)} of {rounds + 1} rounds completed: {[(r.number, r.status, r.reason) for r in plan.rounds.all()]}")
    per_round = []
    for r in done:
        wall = (r.finished_at - r.requested_at).total_seconds()
        busy = [a.busy.get(r.pk, 0.0) for a in agents]
        # Partners work in parallel at their sites; here they share 2 cores, so their compute
        # in a round is at least sum/2 wall seconds, and at least the slowest partner's.
        compute = max(max(busy), sum(busy) / 2)
        per_round.append({"wall": wall, "compute": compute, "overhead": wall - compute})
    first, steady = per_round[0], per_round[1:]
    mean = {k: statistics.fmean(x[k] for x in steady) for k in ("wall", "compute", "overhead")}
    return {"n": n, "rounds": len(steady), **mean, "worst": max(x["overhead"] for x in steady), "first": first["overhead"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partners", default="3,10,50")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    load = os.getloadavg()[0]
    rows = [run(int(n), args.rounds, VAR) for n in args.partners.split(",")]
    lines = [
        f"Orchestration overhead per round (logistic regression, 30 features; {os.cpu_count()} cores; SQLite; "
        f"mean of {args.rounds} rounds after a first round; {datetime.now(UTC):%Y-%m-%d}, load average {load:.2f} before the run)",
        "",
        "| partners | wall per round (s) | partners' compute (s) | overhead (s) | worst round's overhead (s) | overhead per partner (ms) | first round's overhead (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['wall']:.3f} | {r['compute']:.3f} | {r['overhead']:.3f} | {r['worst']:.3f} "
            f"| {1000 * r['overhead'] / r['n']:.1f} | {r['first']:.3f} |"
        )
    lines += [
        "",
        "Target: under 0.5 s per round at 3 partners, growing no worse than linearly in partners. The first round",
        "(freshly started processes: first broker connection, first task of each worker) is shown apart.",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "rounds.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
