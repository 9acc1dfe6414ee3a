"""Every check the agent makes before it touches its data for a round, and before it
releases an evaluation: the round's ticket against the pinned coordinator key, the task
against the ticket, the ticket against the terms this organisation holds
(ARCHITECTURE.md, Trust between the coordinator and the partners). A failed check is a
`PlanRefused` with a stable code, which the agent reports to the coordinator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accounting import accountant as acc
from accounting import dp_events
from accounting.tickets import dp_limit_problems

from . import trust

if TYPE_CHECKING:
    from .work import RoundWork


class PlanRefused(Exception):
    """The agent declines a round: an unsigned or mismatched ticket, parameters outside the
    terms it enrolled under, its local budget. `code` is stable (the coordinator stores it
    and shows it with the reason); the message says why in words."""

    def __init__(self, message: str, code: str = "outside_terms") -> None:
        super().__init__(message)
        self.code = code


# Below this, a Gaussian count release is no protection at all (sigma=1e-9 releases the true
# counts); an agreement's own floor (min_noise_multiplier) applies when it is higher.
EVAL_NOISE_FLOOR = 0.5
# The agent's epsilon and the coordinator's come from the same dp-accounting code; this only
# absorbs a different libm.
EPSILON_RTOL = 1e-9


def _refuse_if(problems: list[str], code: str) -> None:
    if problems:
        raise PlanRefused("; ".join(problems), code)


def check_round(round_pk: int, payload: dict, *, coordinator_key: str | None, terms: list[dict], organisation: str | None,
                eval_noise_floor: float = EVAL_NOISE_FLOOR) -> tuple[dict, str]:
    """Every check before the agent touches its data for a round. Returns (ticket, its hash).

    1. the ticket is signed by the pinned coordinator key (`ticket_unsigned`, `ticket_malformed`,
       `ticket_signature`);
    2. it is this round's ticket and matches what the task shows: the plan's parameters, the
       global model, the secure-aggregation round, the RESERVE's event (`ticket_mismatch`);
    3. it is under an agreement this organisation holds, at the version and terms it holds
       (`agreement_unknown`, `terms_mismatch`), and every parameter is inside those terms
       (`outside_terms`), the evaluation noise above the floor (`eval_noise_too_low`), and the
       round's composed epsilon, training and evaluation, at the dataset's delta, at most the
       per-round ceiling (`epsilon_over_ceiling`).
    """
    if not coordinator_key:
        raise PlanRefused("no coordinator ledger key is pinned: no ticket can be trusted", "ticket_signature")
    try:
        ticket_hash = trust.ticket_verify(payload.get("ticket"), bytes.fromhex(coordinator_key))
    except trust.TrustError as exc:
        raise PlanRefused(str(exc), exc.code) from None
    ticket = payload["ticket"]
    plan, dp, model = payload.get("plan") or {}, (payload.get("plan") or {}).get("dp") or {}, payload.get("model") or {}
    cfg = payload.get("config") or {}

    # 2. the ticket is this round's, and the task agrees with it
    problems = []
    shown = {
        "round": round_pk, "secagg_round_id": cfg.get("round_id"), "organisation": organisation,
        "q": dp.get("q"), "z": dp.get("z"), "K": dp.get("K"), "C": dp.get("C"),
        "eval_noise": dp.get("eval_noise_multiplier"), "eval_count": dp.get("eval_count"),
        "delta": plan.get("delta"), "model_spec": plan.get("model_spec"), "learning_rate": plan.get("learning_rate"),
        "momentum": plan.get("momentum"), "weight": plan.get("weight"), "quant": plan.get("quant"),
        "agreement_id": plan.get("agreement"), "start_model_sha256": model.get("sha256"), "model_version": model.get("version"),
        "records": (payload.get("dataset") or {}).get("record_count"),
    }
    for name, value in shown.items():
        if ticket[name] != value:
            problems.append(f"{name}: the ticket says {ticket[name]!r}, the task {value!r}")
    try:
        event = dp_events.dataset_round_event({
            "q": ticket["q"], "z": ticket["z"], "K": ticket["K"],
            "eval_noise_multiplier": ticket["eval_noise"], "eval_count": ticket["eval_count"],
        })
        if dp_events.event_key(ticket["event"]) != dp_events.canonical_json(event):
            problems.append("the ticket's event is not the event of its q, z, K and evaluation")
    except (dp_events.InvalidDpEvent, ValueError, TypeError, KeyError) as exc:
        raise PlanRefused(f"the ticket's DP parameters do not make a valid event: {exc}", "ticket_mismatch") from None
    _refuse_if(problems, "ticket_mismatch")

    # 3. the terms this organisation holds
    agreement = next((t for t in terms if t["agreement"] == ticket["agreement_id"]), None)
    if agreement is None:
        raise PlanRefused(f"the round is under agreement {ticket['agreement_id']}, which this organisation had not signed when the agent enrolled", "agreement_unknown")
    _refuse_if(
        [f"agreement {name}: the ticket says {ticket[mine]!r}, this organisation holds {agreement[name]!r}"
         for mine, name in (("agreement_version", "version"), ("terms_hash", "terms_hash")) if ticket[mine] != agreement[name]],
        "terms_mismatch",
    )
    problems = []
    if not (isinstance(ticket["q"], (int, float)) and 0 < ticket["q"] <= 1) or not (isinstance(ticket["K"], int) and ticket["K"] >= 1):
        problems.append(f"sampling rate {ticket['q']} / steps {ticket['K']} break the accounting")
    problems += dp_limit_problems(ticket, agreement)  # the auditor's verifier checks the same (accounting/tickets.py)
    _refuse_if(problems, "outside_terms")
    if ticket["eval_noise"] is not None:
        floor = max(eval_noise_floor, agreement["min_noise_multiplier"])
        if ticket["eval_noise"] < floor:
            raise PlanRefused(f"evaluation noise multiplier {ticket['eval_noise']} < floor {floor}", "eval_noise_too_low")
        if ticket["eval_count"] != 2:  # this agent releases two counts (correct, total)
            raise PlanRefused(f"the ticket charges {ticket['eval_count']} evaluation counts; this agent releases 2", "ticket_mismatch")
    elif ticket["eval_count"] != 0:
        raise PlanRefused("the ticket charges evaluation counts without evaluation noise", "ticket_mismatch")
    eps = acc.compose_epsilon([event], ticket["delta"], ticket["accountant"])
    ceiling = agreement["max_epsilon_per_round"]
    if eps > ceiling * (1 + EPSILON_RTOL):
        raise PlanRefused(
            f"one round costs epsilon {eps:.4g} at delta {ticket['delta']} (training and evaluation), above the per-round ceiling {ceiling}",
            "epsilon_over_ceiling",
        )
    return ticket, ticket_hash


def check_evaluation(payload: dict, work: RoundWork) -> float:
    """The evaluation the coordinator asks for is the one the round's ticket charged, on the
    round's own dataset. Returns the noise multiplier to use (the ticket's)."""
    ticket = work.ticket
    if ticket.get("eval_noise") is None:
        raise PlanRefused("the round's ticket charged no evaluation release", "ticket_mismatch")
    if payload.get("eval_noise_multiplier") != ticket["eval_noise"]:
        raise PlanRefused(
            f"evaluation noise {payload.get('eval_noise_multiplier')!r} is not the ticket's {ticket['eval_noise']!r}", "ticket_mismatch"
        )
    if payload.get("dataset") != work.dataset:
        raise PlanRefused(f"evaluation asked on dataset {payload.get('dataset')!r}; the round trained on {work.dataset!r}", "ticket_mismatch")
    return ticket["eval_noise"]
