"""A governed round at real model sizes, side by side with Flower's SecAgg+ (issue #19).

fedgov side: the real stack (Redis, gunicorn, a Celery worker and beat) with N partner
agents talking HTTP on loopback, secure aggregation, ledger reservation and commit, tickets,
receipts and a DP evaluation release in every round. The agents run as threads of this
process (so that 50 fit on a 2-core machine); each counts the CPU time its handlers spend
(the partner's compute) and the bytes its HTTP client sends and receives.

Flower side, in the same run right after: Flower's deployment engine (flower-superlink and N
flower-supernode processes on loopback, from bench/.venv-flower, `flwr run` of the app in
bench/flower_rounds/) with a ServerApp running FedAvg through SecAggPlusWorkflow (every
partner shares with every other, the same reconstruction threshold as fedgov) and a
federated evaluation every round, and a ClientApp behind secaggplus_mod. Both sides train
the same model (one flat float32 vector of d parameters) with the same code: the ClientApp
imports fedgov's numpy DP-SGD and runs the fedgov plan's K steps at its q, z, C, learning
rate and momentum on the same partition the fedgov agent trains on, and evaluates on the
same held-out split. What Flower does not do, fedgov keeps doing: governance checks,
budget reservation and commit on a hash-chained ledger, signed tickets and receipts, the
partner's own ledger, the noisy evaluation release.

Sizes: "small" is the 30-feature logistic regression (62 parameters); "1e5" and "1e6" are
MLPs 30-300-300-2 (100,202) and 30-983-983-2 (999,713).

Every figure is the median of --rounds rounds after one warm-up round (freshly started
processes pay one-time costs in it). Wall time per round: fedgov from the round's request to
its completion (evaluation included), Flower from the start of the fit stage to the end of
the evaluate stage. Partners' compute: the CPU seconds of training, masking, unmasking and
evaluating (fedgov: agent handlers' thread time, sending excluded; Flower: the ClientApp's
fit and evaluate, SecAgg+ masking excluded, so Flower's share is if anything understated);
on 2 cores, a round's compute is at least max(slowest partner, sum / 2). The rest (wall -
compute) is orchestration, and on a loaded machine also the partners waiting for a core.
Coordinator CPU: the CPU seconds the coordinator's processes used during the round (fedgov:
web, worker, Redis; Flower: SuperLink, SuperExec and ServerApp), which the load does not
inflate. Peak RSS: VmHWM of each coordinator process (fedgov: gunicorn workers,
Celery worker and pool, Redis; Flower: SuperLink and the ServerApp process), sampled every
0.2 s; the table gives the largest process and the sum. Traffic per partner per round:
fedgov counts HTTP bodies at the agent's client; Flower's SuperNode-SuperLink traffic
(HTTP in Flower 1.41) is counted by a TCP relay in front of the SuperLink, one per SuperNode,
headers included.

Usage: python bench/rounds.py [--sizes small,1e5,1e6] [--partners 3,10] [--rounds 3]
                              [--fifty] [--only fedgov|flower] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

# One BLAS thread per partner on both sides: the partners share 2 cores as it is.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VAR = Path(tempfile.mkdtemp(prefix="fedgov-bench-rounds-"))
os.environ.setdefault("FEDGOV_VAR_DIR", str(VAR))
os.environ["DATABASE_URL"] = f"sqlite:///{VAR / 'bench.sqlite3'}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.core.management import call_command  # noqa: E402

from federation import learning  # noqa: E402
from federation.agent.config import AgentConfig  # noqa: E402
from federation.agent.runner import Agent  # noqa: E402
from federation.services.rounds import round_request  # noqa: E402
from harness import simulation  # noqa: E402
from harness.localstack import descendant_pids, free_port, local_stack, stop, wait_for_port  # noqa: E402

FLOWER_VENV = ROOT / "bench" / ".venv-flower"
FLOWER_APP = ROOT / "bench" / "flower_rounds"
SIZES = {"small": [], "1e5": [300, 300], "1e6": [983, 983]}
MB = 1024 * 1024


# --- measuring -------------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """Peak resident set of a process in bytes (VmHWM), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


class PeakSampler:
    """Every 0.2 s, the VmHWM of every process under the given roots, per group, and the CPU
    seconds all of them have used so far (a process that ended keeps its last reading)."""

    def __init__(self, roots: dict[str, list[int]], *, skip=lambda pid: False) -> None:
        self.roots, self.skip = roots, skip
        self.peak: dict[str, dict[int, int]] = defaultdict(dict)
        self.cpu: dict[int, float] = {}
        self.cpu_series: list[tuple[float, float]] = []  # (time, CPU seconds of every process so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.2)

    def sample(self) -> None:
        for group, roots in self.roots.items():
            for root in roots:
                for pid in [root, *descendant_pids(root)]:
                    if self.skip(pid):
                        continue
                    value = vm_hwm(pid)
                    if value:
                        self.peak[group][pid] = max(self.peak[group].get(pid, 0), value)
                    used = cpu_seconds(pid)
                    if used is not None:
                        self.cpu[pid] = used
        self.cpu_series.append((time.time(), sum(self.cpu.values())))

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the processes used from `start` to `end` (nearest samples)."""
        def at(t: float) -> float:
            before = [c for when, c in self.cpu_series if when <= t]
            return before[-1] if before else 0.0

        return at(end) - at(start)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.sample()
        self._stop.set()
        self._thread.join()

    def largest(self) -> int:
        return max((v for g in self.peak.values() for v in g.values()), default=0)

    def total(self) -> int:
        return sum(v for g in self.peak.values() for v in g.values())


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


class TimedAgent(Agent):
    """An agent that adds up the CPU time its handlers spend, i.e. the partner's compute,
    excluding the time its messages spend being posted (the coordinator's side), and counts
    the bytes of every HTTP body its client sends and receives, with the time.

    CPU time of the agent's own thread, not wall time: the agents are threads of one process
    here, and a handler's wall time is mostly waiting for the GIL while the others compute."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.busy: dict[int, float] = defaultdict(float)  # round id -> CPU seconds
        self.traffic: list[tuple[float, int, int]] = []  # (time, sent, received)
        session_request = self.http.session.request

        self.trace: list[tuple[float, float, str, str]] = []  # (start, seconds, method, path): --trace

        def counted(method, url, **kwargs):
            t0 = time.time()
            response = session_request(method, url, **kwargs)
            body = kwargs.get("data") or (json.dumps(kwargs["json"]).encode() if kwargs.get("json") is not None else b"")
            self.traffic.append((time.time(), len(body), len(response.content)))
            self.trace.append((t0, time.time() - t0, method, url.split("/agent/")[-1]))
            return response

        self.http.session.request = counted

    def handle(self, task):
        t0, w0 = time.thread_time(), time.time()
        super().handle(task)
        self.busy[task["round"]] += time.thread_time() - t0
        self.trace.append((w0, time.time() - w0, "handle", task["phase"]))

    def _send(self, round_pk, *a, **kw):  # time on the wire is the coordinator's, not the partner's
        t0 = time.thread_time()
        super()._send(round_pk, *a, **kw)
        self.busy[round_pk] -= time.thread_time() - t0

    def bytes_between(self, start: float, end: float) -> tuple[int, int]:
        sent = sum(s for t, s, _ in self.traffic if start <= t <= end)
        received = sum(r for t, _, r in self.traffic if start <= t <= end)
        return sent, received


# --- fedgov ----------------------------------------------------------------------------------


def federation_for(size: str, n: int, rounds: int, work: Path):
    table = simulation.default_table()
    if n > 10:  # enough records for 50 partitions: repeat the table
        table = simulation.Table(table.header, table.label, table.rows * (n // 10 + 1))
    tag = f"{size}-{n}"
    parts = simulation.partition(table, n, work / f"data-{tag}")
    table.write(work / f"all-{tag}.csv")
    schema = simulation.schema_for(table, work / f"all-{tag}.csv")
    hidden = SIZES[size]
    spec = {"kind": "mlp", "hidden": hidden} if hidden else {"kind": "logreg"}
    fed = simulation.setup_federation(
        partitions=parts, schema=schema, epsilon=50.0, rounds=rounds + 1, phase_timeout=300, plan_overrides={"model_spec": spec},
    )
    return fed, parts


def run_fedgov(size: str, n: int, rounds: int, work: Path) -> dict:
    fed, parts = federation_for(size, n, rounds, work)
    tag = f"{size}-{n}"
    with local_stack(log_dir=work / f"logs-{tag}") as stack:
        roots = {name: [p.popen.pid] for name, p in stack.procs.items() if not name.startswith("beat")}
        agents = [
            TimedAgent(AgentConfig(server=stack.server, token=tok, data=parts[i], state_dir=work / f"agents-{tag}" / slug, poll_wait=5))
            for i, (slug, tok) in enumerate(fed.tokens.items())
        ]
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        # The supervising bash loops are not the coordinator: only what they run is counted.
        with PeakSampler(roots, skip=lambda pid: cmdline(pid).startswith(("bash", "sleep"))) as peaks:
            for t in threads:
                t.start()
            simulation.wait_for_agents(fed, timeout=120)
            round_request(actor=fed.admin, plan=fed.plan)
            plan = simulation.wait_for_plan(fed.plan, timeout=3600, poll=0.05)
        for a in agents:
            a.stop()
    done = [r for r in plan.rounds.order_by("number") if r.status == "completed"]
    if len(done) != rounds + 1:
        sys.exit(f"fedgov {tag}: {len(done)} of {rounds + 1} rounds completed: {[(r.number, r.status, r.reason) for r in plan.rounds.all()]}")
    per_round = []
    for r in done:
        wall = (r.finished_at - r.requested_at).total_seconds()
        busy = [a.busy.get(r.pk, 0.0) for a in agents]
        compute = max(max(busy), sum(busy) / 2)
        traffic = [a.bytes_between(r.requested_at.timestamp(), r.finished_at.timestamp()) for a in agents]
        per_round.append({
            "wall": wall, "compute": compute, "overhead": wall - compute,
            "sent": median(s for s, _ in traffic), "received": median(x for _, x in traffic),
            "coordinator_cpu": peaks.cpu_between(r.requested_at.timestamp(), r.finished_at.timestamp()),
        })
    steady = per_round[1:]
    if os.environ.get("BENCH_TRACE"):  # where a round's time goes, as the agents saw it
        last = done[-1]
        t0 = last.requested_at.timestamp()
        with (work / f"trace-{tag}.txt").open("w") as fh:
            for i, a in enumerate(agents):
                for start, secs, method, what in sorted(a.trace):
                    if t0 <= start <= last.finished_at.timestamp():
                        fh.write(f"p{i + 1} {start - t0:8.3f} {secs:7.3f} {method} {what}\n")
        print(f"  trace: {work / f'trace-{tag}.txt'}")
    p = fed.plan
    return {
        "side": "fedgov", "size": size, "n": n, "d": learning.ModelSpec.from_dict(p.model_spec).n_params, "rounds": len(steady),
        **{k: median(x[k] for x in steady) for k in ("wall", "compute", "overhead", "sent", "received", "coordinator_cpu")},
        "first": per_round[0]["wall"], "rss_largest": peaks.largest(), "rss_total": peaks.total(),
        "rss": {g: max(v.values(), default=0) for g, v in peaks.peak.items()},
        "threshold": done[-1].protocol.config["threshold"],
        "plan": {"q": p.sampling_rate, "z": p.noise_multiplier, "C": p.clip_norm, "K": p.local_steps, "lr": p.learning_rate,
                 "momentum": p.momentum, "model_spec": p.model_spec, "eval_fraction": simulation.EVAL_FRACTION},
        "schema": fed.datasets[0].schema(), "parts": [str(x) for x in parts],
    }


# --- Flower ----------------------------------------------------------------------------------


def flower_ready() -> bool:
    return (FLOWER_VENV / "bin" / "flower-superlink").exists()


def flower_bin(name: str) -> str:
    return str(FLOWER_VENV / "bin" / name)


def spawn(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


class CountingRelay:
    """A TCP relay between one SuperNode and the SuperLink that counts the bytes each way,
    with the time (Flower's deployment engine speaks HTTP to the SuperLink; the ServerApp
    and the CLI use the same port, so per-partner traffic is counted on its own path)."""

    def __init__(self, target: int) -> None:
        import socket

        self.target = target
        self.events: list[tuple[float, int, int]] = []  # (time, to the SuperLink, from it)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src, dst, up: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 18)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    self.events.append((time.time(), len(data), 0) if up else (time.time(), 0, len(data)))
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def between(self, start: float, end: float) -> tuple[int, int]:
        with self._lock:
            events = [e for e in self.events if start <= e[0] <= end]
        return sum(e[1] for e in events), sum(e[2] for e in events)

    def close(self) -> None:
        self.server.close()


def flower_data(fed: dict, work: Path) -> list[Path]:
    """Each partition as the fedgov agent loads and splits it (same schema, same split)."""
    schema = learning.Schema.from_declaration(fed["schema"])
    paths = []
    for i, part in enumerate(fed["parts"]):
        X, y = learning.load_csv(Path(part), schema)
        Xt, yt, Xe, ye = learning.train_eval_split(X, y, eval_fraction=fed["plan"]["eval_fraction"], seed=None)
        path = work / f"partition-{i + 1}.npz"
        np.savez(path, X_train=Xt, y_train=yt, X_eval=Xe, y_eval=ye)
        paths.append(path)
    return paths


def run_flower(fed: dict, rounds: int, work: Path) -> dict:
    size, n, plan = fed["size"], fed["n"], fed["plan"]
    work = work / f"flower-{size}-{n}"
    work.mkdir(parents=True, exist_ok=True)
    data = flower_data(fed, work)
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["FLWR_HOME"] = str(work / "flwr-home")
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = str(FLOWER_VENV / "bin") + os.pathsep + env.get("PATH", "")
    port = free_port()  # Flower 1.41 serves the Fleet, Control and Runtime APIs over HTTP on one port
    procs, relays = [], []
    try:
        link = spawn([flower_bin("flower-superlink"), "--insecure", "--port", str(port)],
                     work / "superlink.log", env)
        procs.append(link)
        wait_for_port(port, timeout=60, proc=link, log=work / "superlink.log")
        for i, path in enumerate(data):
            relay = CountingRelay(port)
            relays.append(relay)
            node = spawn([flower_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{relay.port}", "--port", str(free_port()),
                          "--node-config", f"data-file='{path}' partition-id={i}"], work / f"supernode-{i + 1}.log", env)
            procs.append(node)
        home = work / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        hidden = ",".join(str(h) for h in plan["model_spec"].get("hidden", []))
        overrides = {
            "num-server-rounds": rounds + 1, "partners": n, "num-shares": n, "reconstruction-threshold": fed["threshold"],
            "hidden": hidden, "n-features": plan["model_spec"]["n_features"], "n-classes": plan["model_spec"]["n_classes"],
            "sampling-rate": plan["q"], "noise-multiplier": plan["z"], "clip-norm": plan["C"], "local-steps": plan["K"],
            "learning-rate": plan["lr"], "momentum": plan["momentum"], "out-dir": str(work), "fedgov-root": str(ROOT),
        }
        config = work / "run-config.toml"
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items()))
        app = work / "app"
        shutil.copytree(FLOWER_APP, app, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        rounds_file = work / "rounds.jsonl"
        result = subprocess.run([flower_bin("flwr"), "run", str(app), "bench", "--run-config", str(config)],
                                cwd=work, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"flwr run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        with PeakSampler({"superlink": [link.pid]}) as peaks:
            deadline = time.monotonic() + 3600
            while True:
                lines = rounds_file.read_text().splitlines() if rounds_file.exists() else []
                if len(lines) >= rounds + 1:
                    break
                if time.monotonic() > deadline or link.poll() is not None:
                    raise RuntimeError(f"Flower run stalled after {len(lines)} rounds; logs in {work}")
                time.sleep(0.1)
        per_round = [json.loads(x) for x in rounds_file.read_text().splitlines()]
    finally:
        for p in reversed(procs):
            stop(p)
        for relay in relays:
            relay.close()
    clients = [json.loads(x) for x in (work / "clients.jsonl").read_text().splitlines()] if (work / "clients.jsonl").exists() else []
    rows = []
    for r in per_round[1:]:
        cpu = [c["cpu"] for c in clients if r["start"] <= c["time"] <= r["end"]]
        compute = max(max(cpu, default=0.0), sum(cpu) / 2)
        traffic = [relay.between(r["start"], r["end"]) for relay in relays]
        rows.append({
            "wall": r["end"] - r["start"], "compute": compute, "overhead": r["end"] - r["start"] - compute,
            "sent": median(s for s, _ in traffic), "received": median(x for _, x in traffic),
            "coordinator_cpu": peaks.cpu_between(r["start"], r["end"]),
        })
    return {
        "side": "flower", "size": size, "n": n, "d": fed["d"], "rounds": len(rows),
        **{k: median(x[k] for x in rows) for k in ("wall", "compute", "overhead", "sent", "received", "coordinator_cpu")},
        "first": per_round[0]["end"] - per_round[0]["start"], "rss_largest": peaks.largest(), "rss_total": peaks.total(),
        "rss": {str(pid) + " " + cmdline(pid)[:40]: v for pid, v in peaks.peak["superlink"].items()},
    }


# --- the table -------------------------------------------------------------------------------


def fmt_bytes(b: float) -> str:
    if b != b:
        return "-"
    return f"{b / MB:.2f} MiB" if b >= 0.1 * MB else f"{b / 1024:.1f} KiB"


def d_label(size: str) -> str:
    return {"small": "62 (logreg)"}.get(size, size)


def table(rows: list[dict], args, loads: list[tuple[str, tuple]]) -> str:
    machine = f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}"
    lines = [
        f"A governed round at real model sizes, fedgov beside Flower {flower_version()} with SecAgg+ "
        f"({machine}; SQLite; median of {args.rounds} rounds after a warm-up round; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        "Load average (1, 5, 15 min) at the start of each measurement: "
        + "; ".join(f"{what} {a:.2f} {b:.2f} {c:.2f}" for what, (a, b, c) in loads),
        "",
        "| d | n | side | wall per round (s) | partners' compute (s) | the rest: orchestration (s) | coordinator CPU (s) | first round (s) "
        "| coordinator peak RSS, largest / sum (MiB) | partner sends / receives per round | Flower / fedgov wall |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["size"], r["n"], r["side"]): r for r in rows}
    for r in rows:
        other = by.get((r["size"], r["n"], "fedgov"))
        ratio = f"{r['wall'] / other['wall']:.2f}" if r["side"] == "flower" and other else ""
        lines.append(
            f"| {d_label(r['size'])} ({r['d']:,}) | {r['n']} | {r['side']} | {r['wall']:.3f} | {r['compute']:.3f} | {r['overhead']:.3f} | {r['coordinator_cpu']:.2f} "
            f"| {r['first']:.2f} | {r['rss_largest'] / MB:.0f} / {r['rss_total'] / MB:.0f} | {fmt_bytes(r['sent'])} / {fmt_bytes(r['received'])} | {ratio} |"
        )
    lines += [
        "",
        "Both sides: the same d float32 parameters, the same partitions, K DP-SGD steps of fedgov's numpy code at the plan's",
        "q, z, C, learning rate and momentum, secure aggregation among all n partners at the same threshold, an evaluation",
        "on each partner's held-out split every round. Only fedgov also does: governance re-checks, the budget's RESERVE and",
        "COMMIT on the hash-chained signed ledger, a signed ticket checked by each partner, the partner's own ledger and its",
        "signed receipt, and a differentially private evaluation release. Flower's traffic is every byte between a",
        "SuperNode and the SuperLink (HTTP headers included, through a counting relay); fedgov's is HTTP bodies at the agent's client.",
    ]
    if any(r["side"] == "flower" for r in rows) and ("1e6" in args.sizes.split(",")) and "10" in args.partners.split(","):
        f, g = by.get(("1e6", 10, "fedgov")), by.get(("1e6", 10, "flower"))
        if f and g:
            lines += ["", f"fedgov vs Flower, n=10, d=1e6: fedgov {f['wall']:.2f} s, Flower {g['wall']:.2f} s per round, ratio Y/X = {g['wall'] / f['wall']:.1f}"]
    return "\n".join(lines)


def flower_version() -> str:
    try:
        return subprocess.run([flower_bin("python"), "-c", "import flwr; print(flwr.__version__)"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1e6,1e5,small")
    parser.add_argument("--partners", default="3,10")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds, after one warm-up round")
    parser.add_argument("--fifty", action="store_true", help="also 50 partners at d=1e5")
    parser.add_argument("--only", choices=("fedgov", "flower"), help="one side only (development)")
    parser.add_argument("--quick", action="store_true", help="d=1e6, n=3 and 10, 3 rounds")
    args = parser.parse_args()
    logging.getLogger("fedgov.agent").setLevel(logging.WARNING)  # one line per message, per agent: too many here
    if args.quick:
        args.sizes, args.partners, args.rounds = "1e6", "3,10", 3
    if args.only != "fedgov" and not flower_ready():
        sys.exit(f"Flower is not installed in {FLOWER_VENV}: make bench-rounds installs it")
    call_command("migrate", verbosity=0)
    cases = [(s, int(n)) for s in args.sizes.split(",") for n in args.partners.split(",")]
    if args.fifty and ("1e5", 50) not in cases:
        cases.append(("1e5", 50))
    rows, loads = [], []
    for size, n in cases:
        loads.append((f"d={size} n={n}", os.getloadavg()))
        print(f"[{datetime.now(UTC):%H:%M:%S}] fedgov d={size} n={n} (load {os.getloadavg()[0]:.2f})", flush=True)
        fed = run_fedgov(size, n, args.rounds, VAR)
        print(f"  fedgov: {fed['wall']:.3f} s per round", flush=True)
        if args.only != "flower":
            rows.append(fed)
        if args.only != "fedgov":
            print(f"[{datetime.now(UTC):%H:%M:%S}] Flower d={size} n={n} (load {os.getloadavg()[0]:.2f})", flush=True)
            fl = run_flower(fed, args.rounds, VAR)
            print(f"  Flower: {fl['wall']:.3f} s per round", flush=True)
            rows.append(fl)
        write_results(rows, args, loads)  # after every case: a cut-short run still leaves its figures
    print(write_results(rows, args, loads))


def write_results(rows: list[dict], args, loads) -> str:
    text = table(rows, args, loads)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "rounds.md").write_text(text + "\n")
    (out / "rounds.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in ("schema", "parts")} for r in rows], indent=1, default=str) + "\n")
    return text


if __name__ == "__main__":
    main()
