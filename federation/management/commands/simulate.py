"""python manage.py simulate --partners N --rounds R [--data FILE.csv --label COLUMN]
[--test-data FILE.csv] [--epsilon E] [--dropout P] [--json]

A whole federation on one machine through the real stack: Redis, the web server, a Celery
worker and beat, and N partner agents on loopback, each with its own non-IID partition.
Exit 0 when the plan completes or governance stops it (the reason is printed); non-zero when
the plan is left paused (its retries used up, or a round failed) or a round failed.

--dropout P: each agent skips a round's masked input with probability P. A try with fewer
than the threshold of masked inputs aborts and is retried after 1 s (the plan's retry
policy); since the masked-input phase was open, the aborted try is charged in full
(ARCHITECTURE.md, Ledger 2), so the budget is calibrated for the rounds plus the expected
retries (simulation.planned_tries: enough tries for every round to complete with 99% chance).
Aborted tries are listed with their reasons; "completed_rounds" counts the completed ones.
With --json, each dataset reports "epsilon_spent" (the coordinator's ledger) and
"partner_epsilon_spent" (the partner agent's own ledger in its state directory).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from federation.learning import LearningError
from federation.models import ModelVersion, TrainingRound
from federation.services.aggregation import model_params
from federation.services.rounds import round_request
from fedgov.errors import ApplicationError
from harness import simulation
from harness.localstack import local_stack


class Command(BaseCommand):
    help = "Run a whole federation on this machine through the real stack and report accuracy and epsilon."

    def add_arguments(self, parser):
        parser.add_argument("--partners", type=int, required=True, help="number of partner agents (2-50)")
        parser.add_argument("--rounds", type=int, required=True, help="rounds in the plan")
        parser.add_argument("--data", type=Path, help="CSV with every record (default: scikit-learn's breast cancer data)")
        parser.add_argument("--label", help="the label column of --data")
        parser.add_argument("--test-data", type=Path, help="held-out CSV no partner holds, to score each round's model")
        parser.add_argument("--epsilon", type=float, default=8.0, help="every dataset's epsilon budget (default 8)")
        parser.add_argument("--delta", type=float, default=1e-5)
        parser.add_argument("--dropout", type=float, default=0.0, help="probability an agent skips a round's masked input")
        parser.add_argument(
            "--phase-timeout", type=int, default=60, help="seconds a phase waits for the partners (default 60): a dropout costs this long"
        )
        parser.add_argument("--model", choices=["logreg", "mlp"], default="logreg")
        parser.add_argument("--timeout", type=float, default=1800, help="seconds before giving up")
        parser.add_argument("--out", type=Path, help="where to write the final model (.npz)")
        parser.add_argument("--redis-url", help="use this Redis instead of starting one")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def fail(self, message: str) -> CommandError:
        return CommandError(message)

    def handle(self, *args, **o):
        if not 2 <= o["partners"] <= 50:
            raise self.fail("--partners must be between 2 and 50")
        if o["rounds"] < 1:
            raise self.fail("--rounds must be at least 1")
        if not o["epsilon"] > 0:
            raise self.fail("--epsilon must be greater than 0")
        if not 0 < o["delta"] < 1:
            raise self.fail("--delta must be between 0 and 1")
        if not 0 <= o["dropout"] < 1:
            raise self.fail("--dropout must be in [0, 1)")
        if not 5 <= o["phase_timeout"] <= 3600:
            raise self.fail("--phase-timeout must be between 5 and 3600 seconds")
        if o["data"] and not o["label"]:
            raise self.fail("--data needs --label COLUMN")
        for name in ("data", "test_data"):
            if o[name] and not o[name].is_file():
                raise self.fail(f"--{name.replace('_', '-')} {o[name]} is not a readable file")
        self.quiet = o["json"]
        self.tty = sys.stdout.isatty() and not self.quiet
        work = Path(tempfile.mkdtemp(prefix="simulate-", dir=settings.VAR_DIR))
        try:
            table = simulation.read_table(o["data"], o["label"]) if o["data"] else simulation.default_table()
            test_table = None
            if o["test_data"]:
                test_table = simulation.read_table(o["test_data"], table.label)
            elif not o["data"]:
                table, test_table = simulation.split_train_test(table)
            partitions = simulation.partition(table, o["partners"], work / "partitions")
            table.write(work / "all.csv")
            schema = simulation.schema_for(table, work / "all.csv")
        except ValueError as exc:
            raise self.fail(str(exc)) from exc
        call_command("migrate", verbosity=0)
        overrides = {"model_spec": {"kind": o["model"], **({"hidden": [32]} if o["model"] == "mlp" else {})}}
        try:
            fed = simulation.setup_federation(
                partitions=partitions, schema=schema, epsilon=o["epsilon"], delta=o["delta"], rounds=o["rounds"], plan_overrides=overrides,
                dropout=o["dropout"], phase_timeout=o["phase_timeout"],
            )
        except (ApplicationError, LearningError, ValueError) as exc:
            raise self.fail(f"could not set up the federation: {exc}") from exc
        if fed.schedule is not None:
            p = fed.schedule
            self.say(
                f"plan (federation.learning.planner): q={p.q:g}, K={p.local_steps}, C={p.clip_norm:g}, lr={p.learning_rate:g}, "
                f"z={p.noise_multiplier:g}, eval sigma={p.eval_noise_multiplier}, server {p.server_optimizer}"
            )
            for line in p.explanation.splitlines():
                self.say(f"  {line}")
        self.say(f"federation {fed.plan.name}: {o['partners']} partners, {o['rounds']} rounds, epsilon budget {o['epsilon']} each; logs in {work}")
        if fed.tries > o["rounds"]:
            self.say(
                f"dropout {o['dropout']}: the budget pays for {fed.tries} tries (aborted tries after the masked input are charged), "
                f"so that {o['rounds']} rounds complete with 99% chance"
            )
        # Each agent's state directory (its identity key and its own privacy ledger), by organisation.
        self.agent_state = {slug: (work / "agents" / slug, partitions[i]) for i, slug in enumerate(fed.tokens)}
        with local_stack(log_dir=work / "logs", redis_url=o["redis_url"] or None) as stack:
            for i, (slug, token) in enumerate(fed.tokens.items()):
                stack.agent(name=f"agent-{i + 1}", token=token, data=partitions[i], state_dir=self.agent_state[slug][0], dropout=o["dropout"])
            self.say(f"stack up: web {stack.server}, Redis {stack.redis_url}")
            try:
                simulation.wait_for_agents(fed, timeout=120)
            except TimeoutError as exc:
                self.stderr.write(stack.logs()[-6000:])
                raise self.fail(str(exc)) from exc
            round_request(actor=fed.admin, plan=fed.plan)
            started = time.monotonic()
            try:
                plan = simulation.wait_for_plan(fed.plan, timeout=o["timeout"], on_progress=self.progress)
            except TimeoutError as exc:
                self.stderr.write(stack.logs()[-6000:])
                raise self.fail(str(exc)) from exc
            elapsed = time.monotonic() - started
        report = self.report(plan, test_table, schema, o, elapsed)
        report["plan"] = simulation.plan_summary(fed)  # the schedule it chose and why
        out = o["out"] or (work / "final_model.npz")
        final = plan.model_versions.order_by("-version").first()
        if final is not None:
            np.savez(out, params=model_params(final), sha256=final.sha256, model_spec=json.dumps(plan.model_spec), schema=json.dumps(schema))
            self.say(f"final model v{final.version} written to {out}")
        if o["json"]:
            self.stdout.write(json.dumps(report))
        # Aborted tries are retried (the plan's retry policy): not a failure of the run. A
        # failed round, or a plan left paused (retries used up), is.
        failed = [r for r in report["rounds"] if r["status"] == TrainingRound.Status.FAILED]
        if failed:
            self.stderr.write(f"round {failed[-1]['number']} failed: {failed[-1]['reason']}")
            sys.exit(1)
        if plan.status == plan.Status.PAUSED:
            self.stderr.write(f"plan paused: {plan.stopped_reason}")
            sys.exit(1)

    def say(self, message: str) -> None:
        if not self.quiet:
            self.stdout.write(message)

    def progress(self, plan, rounds) -> None:
        if not self.tty or not rounds:
            return
        current = rounds[-1]
        phases = ["", "advertise_keys", "share_keys", "masked_input", "unmask_response", "aggregate", "evaluate"]
        step = phases.index(current.phase) if current.phase in phases else (len(phases) if current.status == "completed" else 0)
        width = 24
        filled = int(width * step / len(phases))
        bar = "#" * filled + "-" * (width - filled)
        self.stdout.write(f"\rround {current.number}/{plan.rounds_total} [{bar}] {current.status} {current.phase:<16}", ending="")
        self.stdout.flush()

    def report(self, plan, test_table, schema, o, elapsed) -> dict:
        from accounting.selectors import dataset_epsilon_spent
        from federation.learning import Schema, evaluate, load_csv

        X_test = y_test = None
        if test_table is not None:
            path = Path(tempfile.mkstemp(suffix=".csv", dir=settings.VAR_DIR)[1])
            test_table.write(path)
            s = Schema.from_declaration(schema)
            X_test, y_test = load_csv(path, s)
            path.unlink()
        rounds = []
        if self.tty:
            self.stdout.write("")
        self.say(f"{'round':>5}  {'status':<10} {'partners':>8}  {'accuracy':>8}  {'test acc':>8}")
        for r in plan.rounds.order_by("number"):
            contributors = r.metrics.get("contributors")
            participants = len(contributors) if contributors is not None else r.participants.count()
            test_acc = None
            mv = ModelVersion.objects.filter(round=r).first()
            if mv is not None and X_test is not None:
                test_acc = evaluate(model_params(mv), plan.model_spec, X_test, y_test)
            acc = r.metrics.get("accuracy")
            interval = r.metrics.get("accuracy_interval")
            rounds.append({
                "number": r.number, "status": r.status, "participants": participants, "accuracy": acc,
                "accuracy_interval": interval, "test_accuracy": test_acc,
                "reason": r.reason if r.status != TrainingRound.Status.COMPLETED else None,
            })
            fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
            band = f"  95% [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
            why = f"  {r.reason}" if r.status != TrainingRound.Status.COMPLETED and r.reason else ""
            self.say(f"{r.number:>5}  {r.status:<10} {participants:>8}  {fmt(acc):>8}  {fmt(test_acc):>8}{band}{why}")
        datasets = []
        for d in plan.datasets.select_related("organisation").order_by("slug"):
            spent = dataset_epsilon_spent(dataset=d)
            # Both sides: the coordinator's ledger, and the partner's own (read from its agent's
            # state directory, after the agents stopped).
            state_dir, data = self.agent_state[d.organisation.slug]
            partner = simulation.partner_epsilon_spent(state_dir, data)
            datasets.append({
                "slug": d.slug, "epsilon_budget": d.epsilon_budget, "epsilon_spent": spent, "partner_epsilon_spent": partner,
                "delta": d.delta,
            })
            shown = f"{partner:.3f}" if partner is not None else "-"
            self.say(f"dataset {d.slug}: epsilon {spent:.3f} of {d.epsilon_budget:.3f} spent (delta {d.delta:g}); the partner's own ledger: {shown}")
        completed = [r for r in rounds if r["status"] == TrainingRound.Status.COMPLETED]
        aborted = [r for r in rounds if r["status"] == TrainingRound.Status.ABORTED]
        stopped = plan.stopped_reason if plan.status == plan.Status.STOPPED else None
        paused = plan.stopped_reason if plan.status == plan.Status.PAUSED else None
        if stopped:
            self.say(f"plan stopped by governance: {stopped}")
        if paused:
            self.say(f"plan paused: {paused}")
        self.say(
            f"{len(completed)} of {plan.rounds_total} rounds completed in {elapsed:.1f}s"
            + (f"; {len(aborted)} aborted tr{'y was' if len(aborted) == 1 else 'ies were'} retried" if aborted else "")
        )
        return {
            "rounds": [{k: v for k, v in r.items() if k != "test_accuracy"} | {"test_accuracy": r["test_accuracy"]} for r in rounds],
            "datasets": datasets,
            "final_accuracy": completed[-1]["accuracy"] if completed else None,
            "test_accuracy": completed[-1]["test_accuracy"] if completed else None,
            "stopped_reason": stopped,
            "paused_reason": paused,
            "completed_rounds": len(completed),
            "aborted_tries": [{"number": r["number"], "reason": r["reason"]} for r in aborted],
        }
