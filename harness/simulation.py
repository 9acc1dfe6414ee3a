"""A whole federation on one machine: data split into partner partitions, the governance
set up through the services, and the plan's progress read back.

Used by `manage.py simulate`, the round benchmark and the integration tests, so all three
exercise the same path a real deployment takes: services for every write, then Redis,
Celery workers, the web server and partner agents talking HTTP.
"""

from __future__ import annotations

import csv
import secrets
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from federation.models import (
    ADMINISTRATORS_GROUP,
    Agreement,
    Membership,
    TrainingPlan,
    TrainingRound,
)
from federation.services.agreements import agreement_create, agreement_sign, agreement_submit
from federation.services.datasets import dataset_register
from federation.services.organisations import membership_add, organisation_create
from federation.services.plans import plan_create
from federation.services.rounds import standing_approval_give
from federation.services.tokens import token_issue
from harness.demo import non_iid_split

User = get_user_model()

# The schedule (sampling rate, local steps, clip norm, learning rates, server optimiser, noise)
# comes from federation.learning.planner, which derives it from public metadata only (record
# counts, features, classes, model, rounds, budgets): see plan_for. The fixed schedule below is
# what the breast-cancer demo (seed_demo) still uses; simulate takes only its model from it.
SAMPLING_RATE = 0.25
DEFAULT_PLAN = dict(
    model_spec={"kind": "logreg"},
    clip_norm=0.3,
    local_steps=30,
    learning_rate=1.0,
    momentum=0.0,
    server_learning_rate=1.0,
    eval_noise_multiplier=10.0,
)
#: Share of each partition the agents hold out for evaluation releases (AgentConfig.eval_fraction).
EVAL_FRACTION = 0.2


def calibrate_noise(*, q: float, K: int, rounds: int, epsilon: float, delta: float, eval_sigma: float | None, margin: float = 0.97) -> float:
    """The smallest noise multiplier z (to 1e-3) for which `rounds` rounds of the plan, evaluation
    releases included, compose to at most margin * epsilon, by dp-accounting (bisection)."""
    from accounting.accountant import compose_epsilon
    from accounting.dp_events import dataset_round_event

    def cost(z: float) -> float:
        event = dataset_round_event({"q": q, "z": z, "K": K, "eval_noise_multiplier": eval_sigma, "eval_count": 2 if eval_sigma else 0})
        return compose_epsilon([event] * rounds, delta)

    lo, hi = 0.3, 64.0
    if cost(hi) > margin * epsilon:
        raise ValueError(f"epsilon {epsilon} cannot pay for {rounds} rounds even with noise multiplier {hi}; raise --epsilon or lower --rounds")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(mid) <= margin * epsilon else (mid, hi)
    return hi


def plan_for(*, sizes: list[int], schema: dict, model_spec: dict, rounds: int, epsilon: float, delta: float):
    """The planner's schedule for partitions of ``sizes`` records (federation.learning.planner)."""
    from federation.learning.planner import plan_schedule

    return plan_schedule(
        record_counts=sizes,
        n_features=len(schema["feature_names"]),
        n_classes=len(schema["label_classes"]),
        rounds=rounds,
        epsilons=[epsilon] * len(sizes),
        deltas=[delta] * len(sizes),
        model_kind=model_spec.get("kind", "logreg"),
        hidden=model_spec.get("hidden") or (),
        max_epsilon_per_round=epsilon,
        eval_releases=1,
        eval_fraction=EVAL_FRACTION,
    )


def plan_summary(fed) -> dict:
    """The schedule the federation's plan runs, for ``simulate --json``: the planner's values
    and its explanation, or the plan's fixed recipe when the caller fixed the noise."""
    p = fed.schedule
    if p is not None:
        return {
            "source": "planner",
            "sampling_rate": p.q, "local_steps": p.local_steps, "clip_norm": p.clip_norm, "learning_rate": p.learning_rate,
            "momentum": p.momentum, "noise_multiplier": p.noise_multiplier, "eval_noise_multiplier": p.eval_noise_multiplier,
            "server_optimizer": dict(p.server_optimizer), "rounds": p.rounds, "expected_batch": p.expected_batch,
            "epsilon": dict(p.epsilon), "eval_half_width": p.eval_half_width, "warnings": list(p.warnings), "explanation": p.explanation,
        }
    plan = fed.plan
    return {
        "source": "fixed",
        **{k: getattr(plan, k) for k in ("sampling_rate", "local_steps", "clip_norm", "learning_rate", "momentum", "noise_multiplier",
                                         "eval_noise_multiplier", "server_optimizer", "rounds_total")},
        "explanation": "fixed recipe: the noise multiplier was given, so the planner was not used",
    }


def try_success_probability(*, partners: int, dropout: float, threshold: int) -> float:
    """Chance that a try completes when each agent independently skips its masked input with
    probability `dropout` (the agent's simulated dropout): at least `threshold` of `partners`
    must send it."""
    from math import comb

    keep = 1.0 - dropout
    return sum(comb(partners, k) * keep**k * dropout ** (partners - k) for k in range(threshold, partners + 1))


def tries_needed(*, rounds: int, success: float, confidence: float = 0.99, limit: int = 1000) -> int:
    """The fewest tries N for which `rounds` of them complete with probability `confidence`
    when each completes with probability `success` (binomial tail)."""
    from math import comb

    if success >= 1.0:
        return rounds
    if success <= 0.0:
        raise ValueError("no try can complete: lower --dropout or use more partners")
    for n in range(rounds, limit + 1):
        p_short = sum(comb(n, k) * success**k * (1 - success) ** (n - k) for k in range(rounds))
        if 1.0 - p_short >= confidence:
            return n
    raise ValueError(f"{rounds} rounds need more than {limit} tries at a {success:.0%} chance of completing each")


def planned_tries(*, rounds: int, partners: int, dropout: float, threshold: int | None = None) -> int:
    """How many tries a simulated plan pays for, so that `rounds` complete with 99% chance.

    Why tries and not rounds: the agent's simulated dropout happens once the masked-input
    phase is open, and from then on an update may have left a partner, so an aborted try
    is charged in full to every dataset (ARCHITECTURE.md, Ledger 2); nothing is released.
    Calibrating the noise for `rounds` would let the budget run out after a few aborts and
    the plan stop short. The threshold is the coordinator's (two thirds, at least a
    majority)."""
    if dropout <= 0:
        return rounds
    if threshold is None:
        threshold = max(2, -(-2 * partners // 3), partners // 2 + 1)
    success = try_success_probability(partners=partners, dropout=dropout, threshold=threshold)
    return tries_needed(rounds=rounds, success=success)


@dataclass
class Table:
    """A labelled table read from a CSV (or the default data), kept as strings for writing
    partitions back out exactly."""

    header: list[str]
    label: str
    rows: list[list[str]]

    @property
    def labels(self) -> np.ndarray:
        i = self.header.index(self.label)
        return np.array([r[i] for r in self.rows])

    def subset(self, idx) -> Table:
        return Table(self.header, self.label, [self.rows[i] for i in idx])

    def write(self, path: Path) -> Path:
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.header)
            writer.writerows(self.rows)
        return path


def read_table(path: Path, label: str) -> Table:
    from federation.learning import DataError

    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path} is empty") from None
        if label not in header:
            raise DataError(f"{path} has no column {label!r} (columns: {', '.join(header[:10])}{'…' if len(header) > 10 else ''})")
        rows = [row for row in reader if row and any(cell.strip() for cell in row)]
    if len(rows) < 10:
        raise DataError(f"{path} has {len(rows)} data rows; a federation needs more")
    return Table(header, label, rows)


def default_table() -> Table:
    from harness.demo import LABEL, breast_cancer_table

    names, X, y = breast_cancer_table()
    return Table([*names, LABEL], LABEL, [[*(f"{v:.6g}" for v in x), lab] for x, lab in zip(X, y)])


def split_train_test(table: Table, *, test_fraction: float = 0.2, seed: int = 11) -> tuple[Table, Table]:
    order = np.random.default_rng(seed).permutation(len(table.rows))
    n_test = int(round(len(order) * test_fraction))
    return table.subset(sorted(order[n_test:])), table.subset(sorted(order[:n_test]))


def schema_for(table: Table, path: Path) -> dict:
    """Stand-in for the metadata partners would declare: derived from the file."""
    from federation.learning import schema_from_csv

    s = schema_from_csv(path, table.label)
    bounds = [[lo, hi if hi > lo else lo + 1.0] for lo, hi in s.bounds]
    # Non-negative features (counts, areas, concentrations) are often heavy-tailed: log1p
    # spreads them; centring to [-1, 1] keeps gradient steps from being dominated by the
    # inputs' common component (see federation/learning/data.py).
    transforms = {f: "log1p" for f, (lo, _hi) in zip(s.features, bounds) if lo >= 0}
    return {
        "feature_names": list(s.features), "label_name": s.label, "label_classes": list(s.classes), "feature_bounds": bounds,
        "feature_transforms": transforms, "centred": True,
    }


@dataclass
class Federation:
    admin: object
    plan: TrainingPlan
    partitions: list[Path]
    tokens: dict[str, str]  # organisation slug -> agent token
    datasets: list = field(default_factory=list)
    schedule: object = None  # the planner's Plan, when the schedule came from it
    tries: int = 0  # tries the budget is calibrated for (rounds, plus the expected retries)


def setup_federation(
    *,
    partitions: list[Path],
    schema: dict,
    epsilon: float,
    rounds: int,
    delta: float = 1e-5,
    prefix: str | None = None,
    plan_overrides: dict | None = None,
    phase_timeout: int = 60,
    dropout: float = 0.0,
) -> Federation:
    """Organisations, users, an active signed agreement, a dataset per partition, a plan
    and standing approvals for all of its rounds, through the services.

    With a simulated `dropout`, the budget pays for the expected retries too (planned_tries):
    the schedule is calibrated for that many tries, the standing approvals cover them, the
    plan retries after 1 s and pauses only once the tries it was calibrated for are used up."""
    prefix = prefix or f"sim{int(time.time())}{secrets.token_hex(2)}"
    admin, _ = User.objects.get_or_create(username=f"{prefix}-admin")
    admin.groups.add(Group.objects.get_or_create(name=ADMINISTRATORS_GROUP)[0])
    plan_kwargs = {"model_spec": DEFAULT_PLAN["model_spec"]}
    plan_kwargs.update(plan_overrides or {})
    sizes = []
    for path in partitions:
        with path.open() as fh:
            sizes.append(sum(1 for _ in fh) - 1)
    tries = planned_tries(rounds=rounds, partners=len(partitions), dropout=dropout, threshold=plan_kwargs.get("secagg_threshold"))
    plan_kwargs.setdefault("retry_backoff_seconds", 1)
    plan_kwargs.setdefault("max_consecutive_failures", max(3, tries - rounds + 1))
    schedule = None
    if "noise_multiplier" not in plan_kwargs:
        schedule = plan_for(sizes=sizes, schema=schema, model_spec=plan_kwargs["model_spec"], rounds=tries, epsilon=epsilon, delta=delta)
        plan_kwargs = {**schedule.plan_kwargs(), **plan_kwargs}
    else:
        # A caller that fixes the noise fixes the schedule: the rest is the fixed recipe, at
        # one sampling rate, so its cost per round is what the caller computed it to be.
        plan_kwargs = {**DEFAULT_PLAN, "sampling_rate": SAMPLING_RATE, **plan_kwargs}
    plan_kwargs.setdefault("batch_size", max(1, round((plan_kwargs.get("sampling_rate") or 0.25) * min(sizes))))
    orgs, reps, tokens = [], [], {}
    for i in range(len(partitions)):
        org = organisation_create(actor=admin, slug=f"{prefix}-p{i + 1}", name=f"Partner {i + 1} ({prefix})")
        rep = User.objects.create(username=f"{prefix}-rep{i + 1}")
        agent = User.objects.create(username=f"{prefix}-agent{i + 1}")
        membership_add(actor=admin, user=rep, organisation=org, role=Membership.Role.REPRESENTATIVE)
        membership_add(actor=admin, user=agent, organisation=org, role=Membership.Role.AGENT)
        _, key = token_issue(actor=admin, user=agent, scopes=["agent"], name="simulate", expires_in_days=2)
        orgs.append(org)
        reps.append(rep)
        tokens[org.slug] = key
    today = date.today()
    agreement = agreement_create(
        actor=admin,
        parties=orgs,
        title=f"Simulation {prefix}",
        purposes=["simulation"],
        valid_from=today - timedelta(days=1),
        valid_until=today + timedelta(days=30),
        min_participants=2,
        min_noise_multiplier=min(0.5, plan_kwargs["noise_multiplier"]),
        max_clip_norm=max(10.0, plan_kwargs["clip_norm"]),
        max_delta=max(delta, 1e-4),
        max_epsilon_per_round=epsilon,
        max_epsilon_budget=epsilon,
        approval_rule=Agreement.ApprovalRule.EVERY_PARTY,
        exit_notice_days=0,
    )
    agreement = agreement_submit(actor=admin, agreement=agreement)
    for org, rep in zip(orgs, reps):
        agreement_sign(actor=rep, agreement=agreement, organisation=org, terms_hash=agreement.terms_hash)
    datasets = []
    for i, (org, rep, n) in enumerate(zip(orgs, reps, sizes)):
        datasets.append(
            dataset_register(
                actor=rep, organisation=org, agreement=agreement, slug=f"{org.slug}-data", name=f"Partition {i + 1}",
                record_count=n, epsilon_budget=epsilon, delta=delta, **schema,
            )
        )
    plan = plan_create(
        actor=admin, agreement=agreement, name=f"Simulation plan {prefix}", purpose="simulation", datasets=datasets,
        rounds_total=rounds, phase_timeout_seconds=phase_timeout, **plan_kwargs,
    )
    for org, rep in zip(orgs, reps):
        # Tries that spent budget count against a standing approval: cover the planned ones.
        standing_approval_give(actor=rep, plan=plan, organisation=org, max_rounds=tries)
    return Federation(admin=admin, plan=plan, partitions=partitions, tokens=tokens, datasets=datasets, schedule=schedule, tries=tries)


def partition(table: Table, parts: int, out_dir: Path, *, seed: int = 7) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, idx in enumerate(non_iid_split(table.labels, parts, seed=seed)):
        if len(idx) < 5:
            from federation.learning import DataError

            raise DataError(f"partition {i + 1} of {parts} has only {len(idx)} rows: use fewer partners or more data")
        paths.append(table.subset(idx).write(out_dir / f"partner-{i + 1}.csv"))
    return paths


FINAL = {TrainingRound.Status.COMPLETED, TrainingRound.Status.BLOCKED, TrainingRound.Status.REJECTED, TrainingRound.Status.FAILED, TrainingRound.Status.ABORTED}


def wait_for_plan(plan: TrainingPlan, *, timeout: float, on_progress=None, poll: float = 0.2) -> TrainingPlan:
    """Poll until the plan completes, is stopped or paused, or nothing more will happen (its
    last round ended without completing and no retry is scheduled); returns the plan. An
    aborted try with a retry scheduled is waited through."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plan.refresh_from_db()
        rounds = list(plan.rounds.order_by("number"))
        if on_progress:
            on_progress(plan, rounds)
        if plan.status != TrainingPlan.Status.ACTIVE:
            return plan
        ended = (TrainingRound.Status.FAILED, TrainingRound.Status.ABORTED, TrainingRound.Status.REJECTED)
        if rounds and rounds[-1].status in ended and plan.retry_at is None:
            plan.refresh_from_db()  # the abort and its retry are written in one transaction
            if plan.retry_at is None and not plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists():
                return plan
        time.sleep(poll)
    raise TimeoutError(f"plan {plan.name!r} still running after {timeout:.0f}s")


def wait_for_agents(fed: Federation, *, timeout: float) -> None:
    """Until every partner's agent has enrolled its identity key."""
    from federation.models import AgentIdentity

    deadline = time.monotonic() + timeout
    slugs = set(fed.tokens)
    while time.monotonic() < deadline:
        enrolled = set(AgentIdentity.objects.filter(organisation__slug__in=slugs, revoked_at__isnull=True).values_list("organisation__slug", flat=True))
        if enrolled == slugs:
            return
        time.sleep(0.2)
    raise TimeoutError(f"agents of {sorted(slugs - enrolled)} did not enrol within {timeout:.0f}s")


def partner_epsilon_spent(state_dir: Path, data: Path) -> float | None:
    """The spent epsilon a partner's own ledger records for its data file (docs/PARTNER-LEDGER.md),
    read from the agent's state directory after replaying and verifying the file; None when
    the agent kept no ledger. Raises LedgerCorrupt if the file does not verify."""
    from federation.agent.ledger_format import default_data_id
    from federation.agent.ledger_view import read_ledger

    try:
        view = read_ledger(state_dir, verify=True)
    except FileNotFoundError:
        return None
    if view.error is not None:
        raise view.error
    figures = view.by_data().get(default_data_id(data))
    return None if figures is None else float(figures["spent"])
