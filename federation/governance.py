"""Every check a round must pass, as data.

`governance_report(round)` returns a report of named checks, each pass or fail with a reason a
person can read. A round whose report fails is BLOCKED and keeps the report; the same report
is shown on the approval page, returned by the API and re-run (stage "start") by the Celery
task that starts the round, inside the transaction that reserves its budget.

Check names are stable: the API, the UI and tests refer to them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from django.utils import timezone

from .i18n import in_english
from .models import Agreement, AgreementParty, AgreementSignature, RoundApproval, TrainingRound

AGREEMENT_ACTIVE = "agreement_active"
AGREEMENT_SIGNED = "agreement_signed"
AGREEMENT_DATES = "agreement_dates"
PURPOSE_PERMITTED = "purpose_permitted"
NO_EXITED_PARTICIPANT = "no_exited_participant"
MIN_PARTICIPANTS = "min_participants"
ONE_DATASET_PER_ORGANISATION = "one_dataset_per_organisation"
DP_PARAMETERS = "dp_parameters"
FEATURE_SCHEMA = "feature_schema"
BUDGET = "budget"
APPROVALS = "approvals"

STAGE_REQUEST = "request"
STAGE_START = "start"


@dataclass
class Check:
    name: str
    passed: bool
    reason: str
    details: dict = field(default_factory=dict)


@dataclass
class GovernanceReport:
    stage: str
    checks: list[Check]
    checked_at: str

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return "All governance checks passed."
        return " ".join(f"{c.name}: {c.reason}" for c in self.failures)

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "passed": self.passed,
            "checked_at": self.checked_at,
            "checks": [asdict(c) for c in self.checks],
        }

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def _ok(name: str, reason: str, **details) -> Check:
    return Check(name, True, reason, details)


def _fail(name: str, reason: str, **details) -> Check:
    return Check(name, False, reason, details)


def check_agreement_active(agreement: Agreement) -> Check:
    if agreement.status == Agreement.Status.ACTIVE:
        return _ok(AGREEMENT_ACTIVE, f"'{agreement.title}' v{agreement.version} is active.")
    return _fail(AGREEMENT_ACTIVE, f"'{agreement.title}' is {in_english(agreement.get_status_display()).lower()}, not active.")


def check_agreement_signed(agreement: Agreement) -> Check:
    parties = {
        p.organisation_id: p.organisation.name
        for p in agreement.party_links.select_related("organisation")
        if p.effective_status() != AgreementParty.Status.EXITED
    }
    signed = set(
        AgreementSignature.objects.filter(
            agreement=agreement, version=agreement.version, terms_hash=agreement.terms_hash
        ).values_list("organisation_id", flat=True)
    )
    missing = sorted(name for oid, name in parties.items() if oid not in signed)
    if not agreement.terms_hash:
        return _fail(AGREEMENT_SIGNED, "The terms have not been sent for signature.")
    if missing:
        return _fail(AGREEMENT_SIGNED, f"Not signed by {', '.join(missing)} (version {agreement.version}).", missing=missing)
    return _ok(AGREEMENT_SIGNED, f"Signed by every party ({len(parties)}) at version {agreement.version}.")


def check_agreement_dates(agreement: Agreement, today=None) -> Check:
    today = today or timezone.localdate()
    if today < agreement.valid_from:
        return _fail(AGREEMENT_DATES, f"The agreement starts on {agreement.valid_from:%Y-%m-%d}; today is {today:%Y-%m-%d}.")
    if today > agreement.valid_until:
        return _fail(AGREEMENT_DATES, f"The agreement ended on {agreement.valid_until:%Y-%m-%d}; today is {today:%Y-%m-%d}.")
    return _ok(AGREEMENT_DATES, f"Within {agreement.valid_from:%Y-%m-%d} to {agreement.valid_until:%Y-%m-%d}.")


# Each rule below exists once, as a function of (plan, agreement, datasets) returning its
# problems as (plan field, message) pairs: the round-time report (check_*) joins the messages,
# and plan definition (definition_problems) shows each next to the field it concerns. A plan
# being defined is an unsaved TrainingPlan: nothing here needs its pk or its datasets relation.


def purpose_problems(plan, agreement) -> list[tuple[str, str]]:
    if plan.purpose in agreement.purposes:
        return []
    return [("purpose", f"'{plan.purpose}' is not among the permitted purposes ({'; '.join(agreement.purposes)}).")]


def check_purpose(round: TrainingRound) -> Check:
    plan, agreement = round.plan, round.plan.agreement
    problems = purpose_problems(plan, agreement)
    if not problems:
        return _ok(PURPOSE_PERMITTED, f"'{plan.purpose}' is a permitted purpose.")
    return _fail(PURPOSE_PERMITTED, problems[0][1])


def check_no_exited_participant(round: TrainingRound, now=None) -> Check:
    agreement = round.plan.agreement
    links = {p.organisation_id: p for p in agreement.party_links.select_related("organisation")}
    bad = []
    for dataset in round.participating_datasets().select_related("organisation"):
        party = links.get(dataset.organisation_id)
        if party is None:
            bad.append(f"{dataset.organisation.name} is not a party")
            continue
        status = party.effective_status(now)
        if status == AgreementParty.Status.EXITED:
            bad.append(f"{dataset.organisation.name} has exited")
        elif status == AgreementParty.Status.NOTICE:
            bad.append(f"{dataset.organisation.name} is in its notice period (exit {party.exit_effective_at:%Y-%m-%d})")
    if bad:
        return _fail(NO_EXITED_PARTICIPANT, "; ".join(sorted(set(bad))) + ".")
    return _ok(NO_EXITED_PARTICIPANT, "No participant has exited or given notice.")


def participant_problems(plan, agreement, n: int) -> list[tuple[str, str]]:
    """The first participant rule that `n` participants break, if any."""
    minimum = agreement.min_participants
    if n < minimum:
        return [("datasets", f"{n} participants, the agreement requires at least {minimum}.")]
    if n < 2:
        return [("datasets", "Secure aggregation needs at least 2 participants.")]
    if plan.secagg_threshold and n < plan.secagg_threshold:
        return [("secagg_threshold", f"{n} participants, below the secure-aggregation threshold of {plan.secagg_threshold}.")]
    return []


def check_min_participants(round: TrainingRound) -> Check:
    plan = round.plan
    n = round.participating_datasets().count()
    minimum = plan.agreement.min_participants
    threshold = plan.threshold_for(n) if n else 0
    problems = participant_problems(plan, plan.agreement, n)
    if problems:
        return _fail(MIN_PARTICIPANTS, problems[0][1], participants=n)
    return _ok(MIN_PARTICIPANTS, f"{n} participants (minimum {minimum}, secure-aggregation threshold {threshold}).", participants=n)


def organisations_with_several(datasets) -> dict[str, list[str]]:
    """Organisation name -> its dataset slugs, for the organisations with more than one."""
    by_org: dict[int, list] = {}
    for dataset in datasets:
        by_org.setdefault(dataset.organisation_id, []).append(dataset)
    return {group[0].organisation.name: sorted(d.slug for d in group) for group in by_org.values() if len(group) > 1}


def one_dataset_per_organisation_problems(datasets) -> list[tuple[str, str]]:
    several = organisations_with_several(datasets)
    if not several:
        return []
    listed = "; ".join(f"{org} has {', '.join(slugs)}" for org, slugs in sorted(several.items()))
    return [("datasets", f"At most one dataset per organisation may take part (one secure-aggregation party each): {listed}.")]


def check_one_dataset_per_organisation(round: TrainingRound) -> Check:
    """Each organisation is one party of the secure-aggregation roster (its agent's identity):
    a plan with two datasets of one organisation could never start a round. Plans are refused
    so at definition; this catches one defined before the rule."""
    datasets = list(round.participating_datasets().select_related("organisation"))
    problems = one_dataset_per_organisation_problems(datasets)
    if problems:
        return _fail(ONE_DATASET_PER_ORGANISATION, problems[0][1], organisations=organisations_with_several(datasets))
    return _ok(ONE_DATASET_PER_ORGANISATION, "Each organisation takes part with one dataset.")


def round_epsilon(plan, dataset) -> float:
    """Epsilon one round of `plan` costs on `dataset` alone, at the dataset's delta."""
    from accounting.accountant import compose_epsilon
    from accounting.dp_events import dataset_round_event

    event = dataset_round_event(plan.dp_params_for(dataset))
    return compose_epsilon([event], dataset.delta, dataset.accountant)


def dp_parameter_problems(plan, agreement, datasets) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(problems, each dataset's epsilon for one round, evaluation releases included). The
    per-round epsilon is checked only with a noise multiplier above 0 (the service refuses
    others on their own)."""
    problems = []
    if plan.noise_multiplier < agreement.min_noise_multiplier:
        problems.append(("noise_multiplier", f"noise multiplier {plan.noise_multiplier} is below the floor {agreement.min_noise_multiplier}"))
    if plan.clip_norm > agreement.max_clip_norm:
        problems.append(("clip_norm", f"clip norm {plan.clip_norm} exceeds the ceiling {agreement.max_clip_norm}"))
    per_dataset = {}
    for dataset in datasets:
        if dataset.delta > agreement.max_delta:
            problems.append(("datasets", f"{dataset.slug}: delta {dataset.delta} exceeds {agreement.max_delta}"))
        eps = round_epsilon(plan, dataset)
        per_dataset[dataset.slug] = eps
        if eps > agreement.max_epsilon_per_round:
            problems.append(
                ("noise_multiplier", f"{dataset.slug}: one round costs epsilon {eps:.3f}, above the per-round ceiling {agreement.max_epsilon_per_round}")
            )
    return problems, per_dataset


def check_dp_parameters(round: TrainingRound) -> Check:
    plan, agreement = round.plan, round.plan.agreement
    problems, per_dataset = dp_parameter_problems(plan, agreement, round.participating_datasets())
    if problems:
        return _fail(DP_PARAMETERS, "; ".join(m for _, m in problems) + ".", epsilon_per_round=per_dataset)
    return _ok(
        DP_PARAMETERS,
        f"z={plan.noise_multiplier} >= {agreement.min_noise_multiplier}, C={plan.clip_norm} <= {agreement.max_clip_norm}, "
        f"epsilon per round <= {agreement.max_epsilon_per_round}.",
        epsilon_per_round=per_dataset,
    )


def feature_schema_problems(plan, datasets) -> list[tuple[str, str]]:
    want = plan.schema()
    bad = []
    datasets = list(datasets)
    for dataset in datasets:
        have = dataset.schema()
        if have["feature_names"] != want["feature_names"]:
            missing = [f for f in want["feature_names"] if f not in have["feature_names"]]
            bad.append(
                ("feature_names", f"{dataset.slug} lacks features {', '.join(missing[:5])}" if missing else f"{dataset.slug} orders its features differently")
            )
        if have["label_name"] != want["label_name"]:
            bad.append(("label_name", f"{dataset.slug} labels {have['label_name']!r}, the plan needs {want['label_name']!r}"))
        if set(have["label_classes"]) != set(want["label_classes"]):
            bad.append(("label_classes", f"{dataset.slug} declares classes {have['label_classes']}, the plan needs {want['label_classes']}"))
    # Updates are averaged: every partner must turn records into model input the same way.
    if datasets and any(d.scaling() != datasets[0].scaling() for d in datasets[1:]):
        differ = [d.slug for d in datasets[1:] if d.scaling() != datasets[0].scaling()]
        bad.append(("datasets", f"{', '.join(differ)} declare other feature transforms or centring than {datasets[0].slug}"))
    return bad


def check_feature_schema(round: TrainingRound) -> Check:
    plan = round.plan
    want = plan.schema()
    bad = feature_schema_problems(plan, round.participating_datasets())
    if bad:
        return _fail(FEATURE_SCHEMA, "; ".join(m for _, m in bad) + ".")
    return _ok(FEATURE_SCHEMA, f"Every dataset declares the plan's {len(want['feature_names'])} features and label {want['label_name']!r}.")


def check_budget(round: TrainingRound) -> Check:
    from accounting.services.budget import budget_check

    results = budget_check(round=round)
    details = {
        r.dataset.slug: {"requested": r.requested, "remaining": r.remaining, "spent": r.spent, "budget": r.budget}
        for r in results
    }
    over = [r for r in results if not r.ok]
    if over:
        return _fail(
            BUDGET,
            "; ".join(
                f"budget exhausted for dataset {r.dataset.slug}: {r.spent:.2f} of {r.budget:.2f} spent, next round needs {r.requested:.2f}"
                for r in over
            ) + ".",
            datasets=details,
        )
    return _ok(BUDGET, "Every dataset's remaining budget covers this round.", datasets=details)


def required_approvers(round: TrainingRound) -> tuple[set[int], int]:
    """(organisations whose datasets the round uses, approvals needed among them)."""
    orgs = set(round.participating_datasets().values_list("organisation_id", flat=True))
    return orgs, round.plan.agreement.approvals_required(len(orgs))


def check_approvals(round: TrainingRound) -> Check:
    orgs, needed = required_approvers(round)
    decisions = dict(RoundApproval.objects.filter(round=round).values_list("organisation_id", "decision"))
    rejected = [oid for oid, d in decisions.items() if d == RoundApproval.Decision.REJECT]
    approved = [oid for oid in orgs if decisions.get(oid) == RoundApproval.Decision.APPROVE]
    if rejected:
        return _fail(APPROVALS, f"Rejected by {len(rejected)} organisation(s).")
    if len(approved) < needed:
        return _fail(APPROVALS, f"{len(approved)} of {needed} required approvals given.", approved=len(approved), needed=needed)
    return _ok(APPROVALS, f"{len(approved)} of {needed} required approvals given.", approved=len(approved), needed=needed)


def governance_report(round: TrainingRound, *, stage: str = STAGE_REQUEST) -> GovernanceReport:
    """Run every check on a proposed round. At stage "start" the approvals are required too."""
    agreement = round.plan.agreement
    checks = [
        check_agreement_active(agreement),
        check_agreement_signed(agreement),
        check_agreement_dates(agreement),
        check_purpose(round),
        check_no_exited_participant(round),
        check_min_participants(round),
        check_one_dataset_per_organisation(round),
        check_dp_parameters(round),
        check_feature_schema(round),
        check_budget(round),
    ]
    if stage == STAGE_START:
        checks.append(check_approvals(round))
    return GovernanceReport(stage=stage, checks=checks, checked_at=timezone.now().isoformat())


# --- At plan definition -------------------------------------------------------------------
#
# What a round request would check and can already be known when a plan is defined: the
# purpose, the participants, the DP floor and ceilings (epsilon
# per round with the evaluation releases), the feature schema, and whether the whole plan fits
# each dataset's remaining budget. The agreement's state (signed, active, dates), exits and
# approvals can change before the first round, so they stay round-time checks only.


@dataclass(frozen=True)
class PlanProjection:
    """The whole plan's privacy cost on one dataset against what its budget has left."""

    dataset: str
    epsilon_per_round: float  # one round, evaluation releases included
    plan_epsilon: float  # every round of the plan, on a fresh budget
    spent: float
    budget: float
    remaining: float  # budget - spent
    projected_spent: float  # spent composed with every round of the plan
    rounds_affordable: int  # rounds of the plan the remaining budget covers

    @property
    def fits(self) -> bool:
        return self.projected_spent <= self.budget

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}


def _composed_epsilon(dataset, cum, vector, rounds: int, event, spent: float) -> float:
    """Spent epsilon after `rounds` more rounds of `event` on top of the ledger's state: RDP
    composes exactly (vectors add, as the ledger does); PLD adds epsilons (an upper bound)."""
    from accounting import accountant as acc

    if dataset.accountant == "rdp":
        return float(acc.epsilon_from_rdp(cum + rounds * vector, float(dataset.delta)))
    import dp_accounting

    return spent + acc.compose_epsilon([dp_accounting.SelfComposedDpEvent(event, rounds)], float(dataset.delta), "pld")


def plan_projection(plan, datasets) -> list[PlanProjection]:
    """Per dataset: the epsilon of all `plan.rounds_total` rounds, composed with what its
    ledger has already spent, against its budget (the same budget rule as budget_check)."""
    import numpy as np

    from accounting import accountant as acc
    from accounting import dp_events
    from accounting.selectors import dataset_budget_state, effective_budget

    out = []
    for dataset in datasets:
        event = dp_events.dataset_round_event(plan.dp_params_for(dataset))
        vector = acc.rdp_vector(event)
        state = dataset_budget_state(dataset=dataset)
        if state is None or state.entry_count == 0:
            cum, spent, budget = np.zeros_like(vector), 0.0, float(dataset.epsilon_budget)
        else:
            cum, spent, budget = acc.rdp_from_json(state.cum_rdp), float(state.epsilon_spent), effective_budget(state, dataset)
        rounds = int(plan.rounds_total)
        projected = _composed_epsilon(dataset, cum, vector, rounds, event, spent)
        if projected <= budget:
            affordable = rounds
        else:  # the largest number of rounds that still fits (monotone in the rounds)
            lo, hi = 0, rounds
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _composed_epsilon(dataset, cum, vector, mid, event, spent) <= budget else (lo, mid)
            affordable = lo
        out.append(
            PlanProjection(
                dataset=dataset.slug,
                epsilon_per_round=round_epsilon(plan, dataset),
                plan_epsilon=_composed_epsilon(dataset, np.zeros_like(vector), vector, rounds, event, 0.0),
                spent=spent,
                budget=budget,
                remaining=budget - spent,
                projected_spent=projected,
                rounds_affordable=affordable,
            )
        )
    return out


def budget_problems(plan, projection: list[PlanProjection]) -> list[tuple[str, str]]:
    return [
        (
            "rounds_total",
            f"{p.dataset}: the whole plan ({plan.rounds_total} rounds) costs epsilon {p.plan_epsilon:.3f}; "
            f"with {p.spent:.3f} already spent that makes {p.projected_spent:.3f}, over its budget of {p.budget:.3f} "
            f"(remaining {p.remaining:.3f}): only {p.rounds_affordable} round(s) fit.",
        )
        for p in projection
        if not p.fits
    ]


def definition_problems(plan, agreement, datasets) -> tuple[list[tuple[str, str]], list[PlanProjection]]:
    """Every problem a round request would find in this plan that is known now, each with the
    plan field it concerns, and the whole plan's budget projection (its overruns are listed
    as problems of `rounds_total`; the caller decides whether they refuse the plan). One
    dataset per organisation is the caller's own check (services.plans, with its own code)."""
    datasets = list(datasets)
    problems = list(purpose_problems(plan, agreement))
    problems += participant_problems(plan, agreement, len(datasets))
    dp, _ = dp_parameter_problems(plan, agreement, datasets)
    problems += dp
    problems += feature_schema_problems(plan, datasets)
    projection = plan_projection(plan, datasets)
    problems += budget_problems(plan, projection)
    return problems, projection
