"""Chaos soak: a plan of many rounds while processes are SIGKILLed at random moments (#16).

Starts the real stack (Redis, gunicorn, a Celery worker and beat) and one agent process per
partner, requests a plan of N rounds, and runs a killer thread that, at random moments drawn
from a seeded RNG, SIGKILLs one of: the Celery worker (with its pool), beat, a gunicorn
worker (the master respawns it), one agent, or Redis. What was killed comes back as a
supervisor would bring it back: the worker and beat by their `supervised` loop, an agent
restarted by this harness with its token and state directory, Redis restarted on the same
port with an empty data directory (the tasks it held are lost: the beat sweep re-drives
them). When the plan pauses after failed tries, the soak resumes it, as a representative
would, and counts that as a cost.

At the end it checks: every round completed or aborted (none left live, none failed), each
completed round made exactly one model version and an aborted one none, the plan completed
its rounds, the ledger verifies, and no dataset spent more than its budget. It prints each
kill with what it cost: the time from the start of the round that was live when the kill
came to the end of the next completed round, minus the median time of a round no kill hit.
Exits 1 when a check fails.

Usage: python bench/chaos.py [--rounds 100] [--seed 1] [--kill-interval 20] [--epsilon E] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = ("worker", "beat", "web-worker", "agent", "redis")


@dataclass
class Kill:
    n: int
    at: float  # seconds since the plan was requested
    wall: str
    target: str
    pid: int | None
    detail: str = ""
    back_after: float | None = None  # seconds until the harness restarted it (None: the supervisor/master did)
    round: int | None = None  # number of the try live when the kill came
    round_status: str = ""
    cost: float | None = None  # seconds of delay, see the module docstring
    shared_with: int | None = None  # an earlier kill that hit the same round


@dataclass
class Report:
    rounds: int
    seed: int
    kill_interval: float
    partners: int
    epsilon: float
    noise_multiplier: float
    tries_paid_for: int
    elapsed: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    resumes: list[dict] = field(default_factory=list)
    tries: list[dict] = field(default_factory=list)
    median_round: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    max_spent: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class Killer(threading.Thread):
    """Kills a target every kill_interval * U(0.5, 1.5) seconds, cycling through the targets
    in a seeded random order so every target is hit before any is hit twice."""

    def __init__(
        self, *, stack, agents: dict, rng: random.Random, interval: float, targets, t0: float, restart_delay: float, log,
        max_kills: int | None = None,
    ):
        super().__init__(daemon=True, name="chaos-killer")
        self.max_kills = max_kills  # None: until the plan finishes
        self.stack, self.agents, self.rng, self.interval = stack, agents, rng, interval
        self.targets, self.t0, self.restart_delay, self.log = list(targets), t0, restart_delay, log
        self.kills: list[Kill] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.restarted = 0

    def run(self) -> None:
        order: list[str] = []
        try:
            while not self.stopping.wait(self.interval * self.rng.uniform(0.5, 1.5)):
                if self.max_kills is not None and len(self.kills) >= self.max_kills:
                    return
                if not order:
                    order = self.rng.sample(self.targets, len(self.targets))
                self.kill(order.pop(0))
        except BaseException as exc:  # reported as a failed check, not lost in a thread
            self.error = exc

    def kill(self, target: str) -> None:
        from harness.localstack import child_pids, kill_hard, kill_supervised_child, restart_redis

        at = time.monotonic() - self.t0
        wall = datetime.now(UTC).isoformat(timespec="milliseconds")
        kill = Kill(n=len(self.kills) + 1, at=at, wall=wall, target=target, pid=None)
        if target in ("worker", "beat"):
            proc = self.stack.procs["worker1" if target == "worker" else "beat"]
            kill.pid = kill_supervised_child(proc)
            kill.detail = "restarted by its supervisor loop"
        elif target == "web-worker":
            master = next(p for n, p in self.stack.procs.items() if n.startswith("web-"))
            workers = child_pids(master.popen.pid)
            if workers:
                kill.pid = self.rng.choice(workers)
                os.kill(kill.pid, 9)
            kill.detail = "respawned by the gunicorn master"
        elif target == "agent":
            i = self.rng.randrange(len(self.agents))
            spec = self.agents[i]
            proc = spec["proc"]
            kill.pid = proc.popen.pid
            kill_hard(proc.popen)
            self.stopping.wait(self.restart_delay)
            self.restarted += 1
            spec["proc"] = self.stack.agent(
                name=f"agent-{i + 1}-r{self.restarted}", token=spec["token"], data=spec["data"], state_dir=spec["state"], poll_wait=2
            )
            kill.detail = f"partner {i + 1}, restarted with its state directory"
            kill.back_after = time.monotonic() - self.t0 - at
        elif target == "redis":
            name = next(n for n in self.stack.procs if n.startswith("redis-"))
            kill.pid = self.stack.procs[name].popen.pid
            restart_redis(self.stack, delay=self.restart_delay)
            kill.detail = "restarted on the same port, empty"
            kill.back_after = time.monotonic() - self.t0 - at
        self.kills.append(kill)
        self.log(f"[{at:7.1f}s] kill #{kill.n}: {target} pid {kill.pid} ({kill.detail})")


def build_federation(work: Path, *, rounds: int, partners: int, epsilon: float, phase_timeout: int):
    """A federation whose budget pays for twice the rounds plus four tries at a fixed noise
    (dp-accounting calibration, simulation.calibrate_noise): a kill can abort a try after the
    masked input opened, which spends its budget (ARCHITECTURE.md, Ledger 2), and a partner's
    own ledger keeps every try it trained for."""
    from federation.services.rounds import standing_approval_give
    from harness import simulation

    tries = 2 * rounds + 4
    d = simulation.DEFAULT_PLAN
    z = simulation.calibrate_noise(
        q=simulation.SAMPLING_RATE, K=d["local_steps"], rounds=tries, epsilon=epsilon, delta=1e-5, eval_sigma=d["eval_noise_multiplier"]
    )
    table = simulation.default_table()
    parts = simulation.partition(table, partners, work / "data")
    table.write(work / "all.csv")
    schema = simulation.schema_for(table, work / "all.csv")
    fed = simulation.setup_federation(
        partitions=parts, schema=schema, epsilon=epsilon, rounds=rounds, phase_timeout=phase_timeout,
        plan_overrides={"noise_multiplier": z, "retry_backoff_seconds": 1, "max_consecutive_failures": 3},
    )
    # setup_federation's standing approvals cover `rounds` tries; the retries need more.
    for ds in fed.plan.datasets.select_related("organisation"):
        rep = ds.organisation.memberships.get(role="representative").user
        standing_approval_give(actor=rep, plan=fed.plan, organisation=ds.organisation, max_rounds=tries)
    return fed, z, tries


def run_chaos(
    *, rounds: int, seed: int, kill_interval: float, work: Path, partners: int = 3, epsilon: float = 8.0, targets=TARGETS,
    phase_timeout: int = 15, restart_delay: float = 1.5, timeout: float | None = None, calm_rounds: int = 2, log=print,
    max_kills: int | None = None,
) -> Report:
    """The soak; needs Django set up with a migrated database. Returns the report (report.ok).
    The killer starts once `calm_rounds` rounds have completed: with the untouched rounds
    among the rest, they give the median round time each kill's cost is measured against."""
    from federation.models import TrainingPlan, TrainingRound
    from federation.services.rounds import plan_resume, round_request
    from harness import simulation
    from harness.localstack import local_stack

    rng = random.Random(seed)
    fed, z, tries = build_federation(work, rounds=rounds, partners=partners, epsilon=epsilon, phase_timeout=phase_timeout)
    report = Report(rounds=rounds, seed=seed, kill_interval=kill_interval, partners=partners, epsilon=epsilon, noise_multiplier=z, tries_paid_for=tries)
    timeout = timeout or 120 + 90 * rounds
    rep = fed.plan.datasets.order_by("id").first().organisation.memberships.get(role="representative").user
    with local_stack(log_dir=work / "logs") as stack:
        agents = {}
        for i, (slug, token) in enumerate(fed.tokens.items()):
            spec = {"token": token, "data": fed.partitions[i], "state": work / "agents" / slug}
            spec["proc"] = stack.agent(name=f"agent-{i + 1}", token=token, data=spec["data"], state_dir=spec["state"], poll_wait=2)
            agents[i] = spec
        simulation.wait_for_agents(fed, timeout=90)
        t0 = time.monotonic()
        round_request(actor=fed.admin, plan=fed.plan)
        killer = Killer(
            stack=stack, agents=agents, rng=rng, interval=kill_interval, targets=targets, t0=t0, restart_delay=restart_delay, log=log,
            max_kills=max_kills,
        )
        plan = fed.plan
        idle_since = None
        done_rounds = 0
        try:
            while True:
                if time.monotonic() - t0 > timeout:
                    report.failures.append(f"the plan did not finish within {timeout:.0f}s")
                    break
                plan.refresh_from_db()
                if plan.status == TrainingPlan.Status.PAUSED:
                    at = time.monotonic() - t0
                    log(f"[{at:7.1f}s] plan paused: {plan.stopped_reason}; resuming it")
                    try:
                        plan, _ = plan_resume(actor=rep, plan=plan)
                        report.resumes.append({"at": at, "reason": plan.stopped_reason or ""})
                    except Exception as exc:  # Redis down at that moment: the sweep starts the round
                        log(f"[{at:7.1f}s] resume: {exc!r}")
                        report.resumes.append({"at": at, "reason": f"resume raised {exc!r}"})
                    continue
                if plan.status != TrainingPlan.Status.ACTIVE:
                    break
                live = plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists()
                if not live and plan.retry_at is None:
                    # Nothing live, no retry due: the beat sweep should move the plan on; a
                    # minute without that is a stall.
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 60:
                        report.failures.append("the plan stalled: no round live and no retry scheduled for 60 s")
                        break
                else:
                    idle_since = None
                n = plan.rounds.filter(status=TrainingRound.Status.COMPLETED).count()
                if n >= calm_rounds and killer.ident is None:
                    log(f"[{time.monotonic() - t0:7.1f}s] {n} calm rounds done: the killer starts")
                    killer.start()
                if n != done_rounds:
                    done_rounds = n
                    log(f"[{time.monotonic() - t0:7.1f}s] {n}/{rounds} rounds completed, {plan.rounds.count()} tries")
                time.sleep(0.5)
        finally:
            killer.stopping.set()
            if killer.is_alive():
                killer.join(60)
        report.elapsed = time.monotonic() - t0
        report.kills = killer.kills
        if killer.error is not None:
            report.failures.append(f"the killer failed: {killer.error!r}")
        # Let what a last kill interrupted settle (a live round reaches its deadline).
        settle = time.monotonic() + phase_timeout * 4 + 30
        while plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists() and time.monotonic() < settle:
            time.sleep(0.5)
        logs = stack.logs()
    harness = list(report.failures)  # a timeout, a stall, a killer that failed
    all_rounds = check(report, plan)
    report.checks["no stall, timeout or harness error"] = not harness
    if not report.checks["every round completed or aborted"] or not report.checks["the plan finished"]:
        log(logs[-6000:])
    cost_kills(report, all_rounds, t0_wall=_plan_t0(fed.plan, all_rounds))
    return report


def check(report: Report, plan) -> list:
    """The soak's checks on the plan as the database has it, into report.checks (and
    report.failures); returns the plan's tries in order."""
    import io

    from django.core.management import call_command

    from accounting.selectors import dataset_epsilon_spent
    from federation.models import TrainingPlan, TrainingRound

    report.checks.clear()
    plan.refresh_from_db()
    report.max_spent = 0.0
    all_rounds = list(plan.rounds.order_by("number"))
    statuses = [r.status for r in all_rounds]
    completed = [r for r in all_rounds if r.status == TrainingRound.Status.COMPLETED]
    report.tries = [
        {"number": r.number, "status": r.status, "reason": r.reason[:200],
         "seconds": (r.finished_at - r.requested_at).total_seconds() if r.finished_at else None}
        for r in all_rounds
    ]
    ok_status = {TrainingRound.Status.COMPLETED, TrainingRound.Status.ABORTED}
    report.checks["every round completed or aborted"] = all(s in ok_status for s in statuses)
    versions = {r.pk: plan.model_versions.filter(round=r).count() for r in all_rounds}
    report.checks["one model version per completed round, none per aborted"] = all(
        versions[r.pk] == (1 if r.status == TrainingRound.Status.COMPLETED else 0) for r in all_rounds
    )
    report.checks["the plan finished"] = plan.status == TrainingPlan.Status.COMPLETED and len(completed) == plan.rounds_total
    try:
        call_command("verify_ledger", stdout=io.StringIO())
        report.checks["the ledger verifies"] = True
    except (SystemExit, Exception) as exc:
        report.checks["the ledger verifies"] = False
        report.failures.append(f"verify_ledger: {exc!r}")
    over = []
    for ds in plan.datasets.all():
        spent = dataset_epsilon_spent(dataset=ds)
        report.max_spent = max(report.max_spent, spent)
        if spent > ds.epsilon_budget + 1e-9:
            over.append(f"{ds.slug}: {spent:.4f} > {ds.epsilon_budget}")
    report.checks["no budget exceeded"] = not over
    report.failures += over
    if not report.checks["every round completed or aborted"] or not report.checks["the plan finished"]:
        report.failures.append("tries: " + ", ".join(f"{r.number}:{r.status}({r.reason[:80]})" for r in all_rounds))
    return all_rounds


def _plan_t0(plan, all_rounds):
    return all_rounds[0].requested_at if all_rounds else None


def cost_kills(report: Report, all_rounds, *, t0_wall) -> None:
    """Each kill's cost: from the start of the try live at the kill (or the next one) to the
    end of the next completed round, minus the median time of a round no kill hit."""
    if t0_wall is None:
        return
    from datetime import timedelta

    def span(r):
        return r.requested_at, r.finished_at or r.requested_at

    kill_walls = [t0_wall + timedelta(seconds=k.at) for k in report.kills]
    clean = [
        (r.finished_at - r.requested_at).total_seconds() for r in all_rounds
        if r.status == "completed" and r.finished_at and not any(span(r)[0] <= w <= span(r)[1] for w in kill_walls)
    ]
    hit_all = [(r.finished_at - r.requested_at).total_seconds() for r in all_rounds if r.status == "completed" and r.finished_at]
    report.median_round = statistics.median(clean or hit_all) if (clean or hit_all) else None
    first_kill_of: dict[int, int] = {}
    for k, w in zip(report.kills, kill_walls):
        hit = next((r for r in all_rounds if r.finished_at and r.requested_at <= w <= r.finished_at), None)
        hit = hit or next((r for r in all_rounds if r.requested_at >= w), None)
        if hit is None:
            continue
        k.round, k.round_status = hit.number, hit.status
        nxt = next((r for r in all_rounds if r.number >= hit.number and r.status == "completed" and r.finished_at), None)
        if nxt is not None and report.median_round is not None:
            k.cost = (nxt.finished_at - hit.requested_at).total_seconds() - report.median_round
        if hit.number in first_kill_of:
            k.shared_with = first_kill_of[hit.number]
        else:
            first_kill_of[hit.number] = k.n


def render(report: Report) -> str:
    aborted = sum(1 for t in report.tries if t["status"] == "aborted")
    completed = sum(1 for t in report.tries if t["status"] == "completed")
    lines = [
        f"Chaos soak: {report.rounds} rounds, {report.partners} partners, seed {report.seed}, a kill every ~{report.kill_interval:g} s; "
        f"{report.elapsed:.0f} s; {completed} completed and {aborted} aborted tries; {len(report.resumes)} resumes; "
        f"median untouched round {report.median_round or 0:.1f} s; highest spent epsilon {report.max_spent:.3f} of {report.epsilon:g} "
        f"(noise multiplier {report.noise_multiplier:.3f}, paid for {report.tries_paid_for} tries)",
        "",
        "| # | at (s) | target | pid | back after (s) | try hit | its outcome | cost (s) |",
        "|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for k in report.kills:
        back = f"{k.back_after:.1f}" if k.back_after is not None else "supervisor"
        cost = "" if k.cost is None else f"{k.cost:+.1f}" + (f" (with #{k.shared_with})" if k.shared_with else "")
        lines.append(f"| {k.n} | {k.at:.1f} | {k.target} | {k.pid or '-'} | {back} | {k.round or '-'} | {k.round_status or '-'} | {cost} |")
    by_target: dict[str, list[Kill]] = {}
    for k in report.kills:
        by_target.setdefault(k.target, []).append(k)
    lines += ["", "| target | kills | kills whose try aborted | total cost (s, first kill per try) |", "|---|---:|---:|---:|"]
    for t, ks in sorted(by_target.items()):
        firsts = [k for k in ks if k.shared_with is None and k.cost is not None]
        lines.append(
            f"| {t} | {len(ks)} | {sum(1 for k in ks if k.round_status == 'aborted')} | {sum(k.cost for k in firsts):.1f} |"
        )
    for r in report.resumes:
        lines.append(f"\nresumed at {r['at']:.1f} s (a representative's action; the plan had paused after failed tries)")
    lines += ["", "Checks:"] + [f"  [{'ok' if v else 'FAILED'}] {name}" for name, v in report.checks.items()]
    lines += [f"  ! {f}" for f in report.failures]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-interval", type=float, default=20.0)
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=None, help="each dataset's budget (default: 8, or 30 above 20 rounds)")
    parser.add_argument("--calm-rounds", type=int, default=2, help="rounds completed before the first kill (the baseline)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before the plan counts as not finishing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="fedgov-chaos-"))
    os.environ.setdefault("FEDGOV_VAR_DIR", str(var))
    os.environ["DATABASE_URL"] = f"sqlite:///{var / 'chaos.sqlite3'}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    report = run_chaos(
        rounds=args.rounds, seed=args.seed, kill_interval=args.kill_interval, work=var, partners=args.partners, timeout=args.timeout,
        epsilon=args.epsilon or (8.0 if args.rounds <= 20 else 30.0),
        calm_rounds=args.calm_rounds, log=log,
    )
    print(json.dumps(report.as_dict(), indent=2, default=str) if args.json else render(report))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
