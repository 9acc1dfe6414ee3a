"""Load benchmark of the REST API: the ledger list and the round status under gunicorn.

    python bench/api_load.py [--rate 400] [--users 40] [--duration 20] [--workers 4] [--threads 1] [--worker-class sync]

What it does, all on loopback and in a throw-away directory (FEDGOV_VAR_DIR):
1. migrate a fresh SQLite database, `seed_demo`, then through the services: a few hundred
   ledger entries on one dataset (budget grants) and a round awaiting approval; an auditor's
   read-only token;
2. start gunicorn on 127.0.0.1 as the README's deployment section recommends for the pool
   that serves the governance API and the web UI: sync workers, two per core. The API is
   CPU-bound; threads in one process only queue for the GIL (gthread 2x4 spent about 1 ms
   more CPU per request here, and a keep-alive connection pinned to a busy worker stretched
   the p99). The agents' long polls hold a request open for up to 25 s and belong to a
   separate gthread pool with many threads, which this benchmark does not load. Its access
   log records each request's time inside gunicorn; the load starts once every worker has
   answered a health check (a worker's boot is not a request's latency);
3. run locust headless (from .venv-bench, see requirements-bench.txt) for `--duration`
   seconds: `--users` auditors, each at a constant rate so that together they offer `--rate`
   requests per second, half `GET /api/v1/datasets/{id}/ledger/?page_size=20` and half
   `GET /api/v1/rounds/{id}/`, with `Authorization: Token ...`;
4. stop everything, print a table (requests/s, p50, p99 per endpoint) beside the time spent
   inside gunicorn (the rest is queueing for the two cores), and write
   bench/results/api_load.md and .json.

The target on a 2-core machine (gunicorn and locust share it): >= 300 requests/s with p99 <
100 ms. A fixed offered rate, not a closed loop at full speed: a closed loop measures how
long requests queue, not how long the server takes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
LOCUST = ROOT / ".venv-bench" / "bin" / "locust"
LEDGER_ENTRIES = 300
TARGET_RPS = 300
TARGET_P99_MS = 100

SEED = """
import json
from django.contrib.auth import get_user_model
from accounting.services.budget import budget_grant
from federation.models import Dataset, TrainingPlan
from federation.services.rounds import round_request
from federation.services.tokens import token_issue

admin = get_user_model().objects.get(username="admin")
auditor = get_user_model().objects.get(username="auditor")
dataset = Dataset.objects.order_by("id").first()
for i in range({entries}):
    budget_grant(dataset=dataset, epsilon_budget=dataset.epsilon_budget + i / 1000, actor=admin)
plan = TrainingPlan.objects.order_by("id").first()
round = round_request(actor=admin, plan=plan)
_, key = token_issue(actor=auditor, user=auditor, scopes=["read"], name="api_load bench")
print(json.dumps({{"dataset": dataset.pk, "round": round.pk, "round_status": round.status, "token": key,
                  "entries": dataset.ledger_entries.count()}}))
"""

LOCUSTFILE = """
from locust import FastHttpUser, constant_throughput, task

HEADERS = {{"Authorization": "Token {token}", "Accept": "application/json"}}


class Auditor(FastHttpUser):
    wait_time = constant_throughput({per_user})

    @task
    def ledger(self):
        self.client.get("/api/v1/datasets/{dataset}/ledger/?page_size=20", headers=HEADERS, name="ledger list")

    @task
    def round_status(self):
        self.client.get("/api/v1/rounds/{round}/", headers=HEADERS, name="round status")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list, env: dict, ok_codes=(0,), **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode not in ok_codes:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"gunicorn did not answer {url} within {timeout:.0f} s")


def wait_for_every_worker(url: str, workers: int, access_log: Path, timeout: float = 60.0) -> None:
    """Send bursts of concurrent health checks until every gunicorn worker has answered one
    (the access log names the worker's pid): a worker still booting when the load starts
    would count its boot as request latency, which no steady-state server has."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(_):
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()

    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=workers * 2) as pool:
        while time.monotonic() < deadline:
            list(pool.map(ask, range(workers * 2)))
            pids = {line.split()[1] for line in access_log.read_text().splitlines() if line.strip()}
            if len(pids) >= workers:
                return
            time.sleep(0.2)
    sys.exit(f"only {len(pids)} of {workers} gunicorn workers answered within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a process we started (its own process group: gunicorn's workers go with it)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) used so far by the processes of one process group (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "pid (comm)": state ppid pgrp ...
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def read_stats(prefix: Path) -> list[dict]:
    rows = []
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.append(
                {
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"]),
                    "p99_ms": float(row["99%"]),
                    "max_ms": float(row["Max Response Time"]),
                }
            )
    return rows


def server_times(log: Path) -> dict:
    """p50, p99 and max of the time each request spent inside gunicorn, from its access log."""
    if not log.exists():
        return {}
    micros = sorted(int(line.split()[0]) for line in log.read_text().splitlines() if line.strip())
    if not micros:
        return {}
    pick = lambda q: micros[min(len(micros) - 1, int(q * len(micros)))] / 1000  # noqa: E731
    return {"requests": len(micros), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": micros[-1] / 1000}


def table(rows: list[dict]) -> str:
    lines = [
        "| endpoint | requests | failures | req/s | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['requests']} | {r['failures']} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=400.0, help="offered load, requests per second in total")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="gthread only (gunicorn runs gthread when threads > 1)")
    parser.add_argument("--worker-class", default="sync", choices=["gthread", "sync"])
    parser.add_argument("--no-write", action="store_true", help="print only, do not write bench/results/")
    args = parser.parse_args()
    if not LOCUST.exists():
        sys.exit(f"{LOCUST} not found: python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt")

    var = Path(tempfile.mkdtemp(prefix="fedgov-api-load-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="fedgov.settings",
        FEDGOV_ENV="development",
        FEDGOV_VAR_DIR=str(var),
        DEBUG="false",
        DB_CONN_MAX_AGE="600",  # keep connections: what a deployment does
        # Token rows cached, as a deployment's shared cache (Redis) has them; each worker's
        # memory here is safe as no token changes during the run (federation/token_cache.py).
        FEDGOV_API_TOKEN_CACHE_SECONDS="30",
        LOG_LEVEL="WARNING",
    )
    server = None
    try:
        print(f"seeding a fresh database in {var} ...", flush=True)
        run([PYTHON, "manage.py", "migrate", "--noinput"], env)
        run([PYTHON, "manage.py", "seed_demo", "--password", "bench-password"], env)
        seeded = json.loads(
            run([PYTHON, "manage.py", "shell", "-c", SEED.format(entries=LEDGER_ENTRIES)], env).stdout.strip().splitlines()[-1]
        )
        print(
            f"  {seeded['entries']} ledger entries on dataset {seeded['dataset']}, round {seeded['round']} ({seeded['round_status']})"
        )

        port = free_port()
        host = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                GUNICORN,
                "fedgov.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
                "--worker-class",
                args.worker_class,
                "--log-level",
                "warning",
                # Each request's time inside gunicorn (microseconds), to tell the server's
                # own tail from time spent queueing in the kernel or in locust.
                "--access-logfile",
                str(var / "access.log"),
                "--access-logformat",
                "%(D)s %(p)s %(U)s %(t)s",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(var / "gunicorn.log").open("w"),
        )
        wait_until_up(f"{host}/api/v1/health/")
        wait_for_every_worker(f"{host}/api/v1/health/", args.workers, var / "access.log")

        locustfile = var / "locustfile.py"
        locustfile.write_text(
            LOCUSTFILE.format(
                token=seeded["token"], dataset=seeded["dataset"], round=seeded["round"], per_user=args.rate / args.users
            )
        )
        prefix = var / "locust"
        cpu_before, load_before = group_cpu_seconds(server.pid), os.getloadavg()[0]
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(
            f"locust: {args.users} users offering {args.rate:.0f} req/s for {args.duration} s against gunicorn "
            f"({args.workers} workers x {args.threads} threads) ...",
            flush=True,
        )
        run(
            [
                LOCUST,
                "-f",
                locustfile,
                "--headless",
                "--users",
                str(args.users),
                "--spawn-rate",
                str(args.users),
                "--run-time",
                f"{args.duration}s",
                "--host",
                host,
                "--csv",
                prefix,
                "--only-summary",
                "--loglevel",
                "WARNING",
                "--stop-timeout",
                "5",
            ],
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            ok_codes=(0, 1),  # 1: some requests failed; the table says how many, the log why
            timeout=args.duration + 120,
        )
        server_cpu = group_cpu_seconds(server.pid) - cpu_before
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        locust_cpu = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
        rows = read_stats(prefix)
        if any(r["failures"] for r in rows):
            failures = Path(f"{prefix}_failures.csv").read_text()
            log = (var / "gunicorn.log").read_text().splitlines()[-40:]
            print("failures:\n" + failures + "\ngunicorn log (tail):\n" + "\n".join(log))
    finally:
        if server is not None:
            stop(server)
        inside = server_times(var / "access.log")
        shutil.rmtree(var, ignore_errors=True)

    total = next(r for r in rows if r["name"] == "Aggregated")
    cpu_ms = server_cpu * 1000 / max(total["requests"], 1)
    context = (
        f"gunicorn used {server_cpu:.1f} CPU-seconds ({cpu_ms:.1f} ms of CPU per request), locust {locust_cpu:.1f}, "
        f"in {args.duration} s on {os.cpu_count()} cores. "
        f"Load average before the run: {load_before:.2f} on {os.cpu_count()} cores (other work on the machine competes for them). "
        f"At that CPU cost, the server alone on all {os.cpu_count()} cores (less locust's share) would saturate near "
        f"{(os.cpu_count() - locust_cpu / args.duration) * 1000 / cpu_ms:.0f} req/s: a projection, not a measurement."
    )
    ok = total["rps"] >= TARGET_RPS and total["p99_ms"] < TARGET_P99_MS and total["failures"] == 0
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: {total['rps']:.0f} req/s (target >= {TARGET_RPS}), p99 {total['p99_ms']:.0f} ms "
        f"(target < {TARGET_P99_MS}), {total['failures']} failures"
    )
    print()
    print(table(rows))
    print()
    print(verdict)
    if inside:
        context += (
            f" Inside gunicorn (its access log, {inside['requests']} requests with the health checks): p50 "
            f"{inside['p50_ms']:.1f} ms, p99 {inside['p99_ms']:.1f} ms, max {inside['max_ms']:.0f} ms; the rest of "
            "locust's figures is queueing for the cores, in the kernel and in locust itself."
        )
    print(context)

    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        meta = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "server": f"gunicorn {args.worker_class}, {args.workers} workers x {args.threads} threads, SQLite, DEBUG off",
            "load": f"locust FastHttpUser, {args.users} users, constant throughput, offered {args.rate:.0f} req/s, {args.duration} s",
            "data": f"seed_demo + {LEDGER_ENTRIES} ledger entries; ledger page of 20 entries; an auditor's read token",
        }
        (RESULTS / "api_load.json").write_text(
            json.dumps(
                {
                    **meta,
                    "ok": ok,
                    "server_cpu_ms_per_request": round(cpu_ms, 2),
                    "server_cpu_seconds": round(server_cpu, 1),
                    "locust_cpu_seconds": round(locust_cpu, 1),
                    "load_average_before": load_before,
                    "inside_gunicorn": inside,
                    "results": rows,
                },
                indent=2,
            )
            + "\n"
        )
        (RESULTS / "api_load.md").write_text(
            "# API load: ledger list and round status\n\n"
            f"`python bench/api_load.py --rate {args.rate:.0f} --users {args.users} --duration {args.duration} "
            f"--workers {args.workers} --threads {args.threads} --worker-class {args.worker_class}`\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in meta.items())
            + "\n"
            + table(rows)
            + "\n\n"
            + verdict
            + "\n\n"
            + context
            + "\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
