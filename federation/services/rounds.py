"""The round lifecycle: every state transition of a training round, in one place.

    REQUESTED -> BLOCKED | AWAITING_APPROVAL -> APPROVED | REJECTED
    APPROVED -> RUNNING (re-check + reserve) -> AGGREGATING -> COMPLETED
    any live state -> ABORTED | FAILED (budget per ARCHITECTURE.md, Ledger 2)

Request, approve, reject, start, close a phase, aggregate, complete, abort, continue the plan,
retry and resume: each changes a round's status through `_transition`, which checks the state
machine (TrainingRound.TRANSITIONS), saves and records the event. Within RUNNING and
AGGREGATING the phases follow the secure-aggregation glue's outcomes (services/protocol.py,
which never imports this module); the new model is services/aggregation.py's; tasks are
enqueued after commit through services/enqueue.py.

State changes are compare-and-set under the round's row lock (ARCHITECTURE.md, Conventions 7):
two approvals arriving together, or a task delivered twice, move a round once. Partners reach
out (the agent API); each phase closes when every live partner has answered or at its
deadline, whichever comes first: a partner that misses a deadline is a dropout.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from fedgov.errors import InvalidState

from .. import governance, wakeup
from ..access import require_round_requester
from ..i18n import in_english
from ..models import (
    AgreementParty,
    GovernanceEvent,
    ModelVersion,
    Organisation,
    RoundApproval,
    RoundParticipant,
    StandingApproval,
    TrainingPlan,
    TrainingRound,
)
from . import enqueue
from .agents import round_roster_choose
from .aggregation import aggregate_compute, aggregate_store, latest_model, results_record
from .approvals import approval_record, decider_check, standing_approval_create, standing_approvals_apply
from .common import event_record, field_error
from .plans import plan_blocked, plan_complete_if_done, plan_reactivate, plan_round_failed
from .protocol import AGGREGATE, EVALUATE, MASKED, Next, protocol_close, protocol_open
from .settlement import round_budget_settle
from .tickets import receipts_missing, round_tickets_issue

Status = TrainingRound.Status

MSG_PLAN_NOT_ACTIVE = "Plan '{plan}' is {status}: {reason}"
MSG_ROUND_LIVE = "Round {number} of '{plan}' is still {status}; one round of a plan runs at a time."
MSG_NOT_AWAITING = "Round {number} is {status}; approvals are only taken while a round awaits them."
MSG_REASON_REQUIRED = "Say why you reject the round."
MSG_PLAN_COMPLETE = "Plan '{plan}' has run all of its {total} rounds."
MSG_TRANSITION = "Round {number} cannot go from {old} to {new}."

# The event each status is entered with, when the caller says what happened.
EVENT_KINDS = {
    Status.BLOCKED: GovernanceEvent.Kind.ROUND_BLOCKED,
    Status.REJECTED: GovernanceEvent.Kind.ROUND_REJECTED,
    Status.RUNNING: GovernanceEvent.Kind.ROUND_STARTED,
    Status.COMPLETED: GovernanceEvent.Kind.ROUND_COMPLETED,
    Status.ABORTED: GovernanceEvent.Kind.ROUND_ABORTED,
    Status.FAILED: GovernanceEvent.Kind.ROUND_FAILED,
}


class RoundTransitionRefused(InvalidState):
    """A service asked for a round status change the state machine does not allow."""

    code = "round_transition_refused"


def _transition(
    round: TrainingRound, to: str, *, reason: str = "", actor=None, event: str = "", details=None, organisation=None, then=None, **fields
) -> TrainingRound:
    """The one way a round's status changes (the caller holds the round's row lock).

    Refuses, changing nothing, a move the state machine (TrainingRound.TRANSITIONS,
    ARCHITECTURE.md, Rounds) does not allow; sets the reason, `finished_at` on a final state
    and `fields`; saves; runs `then()` (the budget, which the ledger settles only once the
    final state is saved); and records the event `event` of the kind `to` is entered with."""
    if to not in TrainingRound.TRANSITIONS.get(round.status, ()):
        raise RoundTransitionRefused(MSG_TRANSITION.format(number=round.number, old=round.status, new=to), round=round.pk, old=round.status, new=to)
    round.status = to
    if reason:
        round.reason = reason
    if to in TrainingRound.FINAL_STATES:
        round.finished_at = timezone.now()
    for k, v in fields.items():
        setattr(round, k, v)
    round.save()
    if then is not None:
        then()
    if event:
        event_record(
            kind=EVENT_KINDS[to], message=event, actor=actor, agreement=round.plan.agreement, organisation=organisation, round=round, details=details
        )
    return round


def _phase_open(round: TrainingRound, phase: str, *, status: str | None = None) -> None:
    """Open `phase` of the round (under its lock), moving it to `status` if given; after the
    commit, schedule the phase's deadline and wake the agents waiting for work (their long
    polls re-read their tasks at once)."""
    deadline = timezone.now() + timedelta(seconds=round.plan.phase_timeout_seconds)
    if status is not None:
        _transition(round, status, phase=phase, phase_deadline=deadline)
    else:
        round.phase, round.phase_deadline = phase, deadline
        round.save(update_fields=["phase", "phase_deadline"])
    wakeup.announce_agent_work(round.pk)
    enqueue.after_commit(enqueue.PHASE_CLOSE, round.pk, phase, countdown=round.plan.phase_timeout_seconds)


# --- request and approvals ----------------------------------------------------------------------


def eligible_datasets(plan: TrainingPlan):
    """The plan's datasets whose organisation is still an active party (not exited, no notice)."""
    links = {p.organisation_id: p for p in plan.agreement.party_links.all()}
    return [
        d
        for d in plan.datasets.select_related("organisation").order_by("id")
        if d.organisation_id in links and links[d.organisation_id].effective_status() == AgreementParty.Status.ACTIVE
    ]


@transaction.atomic
def round_request(*, actor, plan: TrainingPlan, idempotency_key: str = "", system: bool = False) -> TrainingRound:
    """Ask for the plan's next round. Returns the round, BLOCKED with its report when a
    governance check fails, otherwise AWAITING_APPROVAL (or APPROVED when standing approvals
    cover it). A repeated request with the same idempotency key returns the first round."""
    return round_request_once(actor=actor, plan=plan, idempotency_key=idempotency_key, system=system)[0]


@transaction.atomic
def round_request_once(
    *, actor, plan: TrainingPlan, idempotency_key: str = "", system: bool = False
) -> tuple[TrainingRound, bool]:
    """round_request, and whether this call created the round (True) or found the one an
    earlier request with the same idempotency key created (False): the API answers 201 or
    200. The plan's row lock is taken before the key is looked up, so two copies of one
    request arriving together see one create and the other find its round."""
    if not system:
        require_round_requester(actor, plan)
    # The plan row serialises requests: two clients asking at once get round n and a refusal,
    # never two rounds numbered n.
    plan = TrainingPlan.objects.select_for_update().select_related("agreement").get(pk=plan.pk)
    if idempotency_key:
        if len(idempotency_key) > 128:
            raise field_error("idempotency_key", "An Idempotency-Key has at most 128 characters.")
        existing = TrainingRound.objects.filter(plan=plan, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    if plan.status != TrainingPlan.Status.ACTIVE:
        raise InvalidState(
            MSG_PLAN_NOT_ACTIVE.format(
                plan=plan.name, status=in_english(plan.get_status_display()).lower(), reason=plan.stopped_reason or "no reason recorded"
            )
        )
    live = plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).first()
    if live:
        raise InvalidState(MSG_ROUND_LIVE.format(number=live.number, plan=plan.name, status=in_english(live.get_status_display()).lower()))
    completed = plan.rounds.filter(status=Status.COMPLETED).count()
    if completed >= plan.rounds_total:
        raise InvalidState(MSG_PLAN_COMPLETE.format(plan=plan.name, total=plan.rounds_total))
    number = (plan.rounds.aggregate(n=Max("number"))["n"] or 0) + 1
    try:
        with transaction.atomic():
            round = TrainingRound.objects.create(
                plan=plan,
                number=number,
                requested_by=actor if getattr(actor, "pk", None) else None,
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        raise InvalidState(f"Round {number} of '{plan.name}' was requested concurrently; retry.") from None
    for dataset in eligible_datasets(plan):
        RoundParticipant.objects.create(round=round, dataset=dataset)
    report = governance.governance_report(round, stage=governance.STAGE_REQUEST)
    round.governance_report = report.to_dict()
    event_record(
        kind=GovernanceEvent.Kind.ROUND_REQUESTED,
        message=f"Round {number} of '{plan.name}' requested with {round.participants.count()} participants.",
        actor=actor,
        agreement=plan.agreement,
        round=round,
    )
    if not report.passed:
        failed = {"failed": [c.name for c in report.failures]}
        _transition(round, Status.BLOCKED, reason=report.summary(), actor=actor, event=f"Round {number} of '{plan.name}' blocked: {report.summary()}", details=failed)
        # Nothing is live now: the plan pauses (or stops, if waiting mends nothing), saying why.
        plan_blocked(plan=plan, round=round)
        return round, True
    _transition(round, Status.AWAITING_APPROVAL)
    standing_approvals_apply(round)
    _maybe_approved(round, actor=actor)
    return round, True


def _maybe_approved(round: TrainingRound, *, actor) -> None:
    if governance.check_approvals(round).passed:
        _transition(round, Status.APPROVED)
        enqueue.after_commit(enqueue.ROUND_START, round.pk)


def _lock_awaiting(round: TrainingRound) -> TrainingRound:
    round = TrainingRound.objects.select_for_update().select_related("plan__agreement").get(pk=round.pk)
    if round.status != Status.AWAITING_APPROVAL:
        raise InvalidState(MSG_NOT_AWAITING.format(number=round.number, status=in_english(round.get_status_display()).lower()))
    return round


@transaction.atomic
def round_approve(*, actor, round: TrainingRound, organisation: Organisation) -> RoundApproval:
    round = _lock_awaiting(round)
    decider_check(actor, round, organisation)
    approval = approval_record(actor=actor, round=round, organisation=organisation, decision=RoundApproval.Decision.APPROVE)
    _maybe_approved(round, actor=actor)
    return approval


@transaction.atomic
def round_reject(*, actor, round: TrainingRound, organisation: Organisation, reason: str) -> RoundApproval:
    reason = (reason or "").strip()
    if not reason:
        raise field_error("reason", MSG_REASON_REQUIRED)
    round = _lock_awaiting(round)
    decider_check(actor, round, organisation)
    approval = approval_record(actor=actor, round=round, organisation=organisation, decision=RoundApproval.Decision.REJECT, reason=reason)
    event = f"{organisation.name} rejected round {round.number} of '{round.plan.name}': {reason}"
    _transition(round, Status.REJECTED, reason=f"Rejected by {organisation.name}: {reason}", actor=actor, organisation=organisation, event=event)
    # Nothing is live now and no retry mends a refusal: the plan pauses, saying who refused
    # and why, until it is resumed (ARCHITECTURE.md, Rounds).
    plan_round_failed(round=round, retryable=False, actor=actor)
    return approval


@transaction.atomic
def standing_approval_give(
    *, actor, plan: TrainingPlan, organisation: Organisation, max_rounds: int | None = None, max_epsilon: float | None = None
) -> StandingApproval:
    """Approve the plan's future rounds for `organisation`, up to a count or an epsilon."""
    standing = standing_approval_create(actor=actor, plan=plan, organisation=organisation, max_rounds=max_rounds, max_epsilon=max_epsilon)
    # A round already waiting benefits at once.
    # Locked before anything is read: a representative deciding on the round meanwhile waits,
    # and whoever comes second sees the first's approval (the round's approvals are re-read
    # under the lock by standing_approvals_apply, which skips an organisation that decided).
    waiting = TrainingRound.objects.select_for_update().filter(plan=plan, status=Status.AWAITING_APPROVAL).first()
    if waiting is not None:
        standing_approvals_apply(waiting)
        _maybe_approved(waiting, actor=actor)
    return standing


# --- start, phases, aggregation, completion -------------------------------------------------------


@transaction.atomic
def round_start(*, round_id: int, actor=None) -> TrainingRound | None:
    """APPROVED -> RUNNING: re-run every governance check and reserve the budget in the same
    transaction, then open the secure-aggregation protocol and issue the round's tickets.
    Returns None when the round is gone or already past APPROVED (a repeated task delivery),
    so the caller does nothing twice."""
    from accounting.services.budget import BudgetExceeded, budget_reserve

    round = TrainingRound.objects.select_for_update().select_related("plan__agreement").filter(pk=round_id).first()
    if round is None or round.status != Status.APPROVED:
        return None
    report = governance.governance_report(round, stage=governance.STAGE_START)
    round.governance_report = report.to_dict()
    if not report.passed:
        why, failed = report.summary(), {"failed": [c.name for c in report.failures]}
        _transition(round, Status.BLOCKED, reason=why, actor=actor, event=f"Round {round.number} of '{round.plan.name}' blocked at start: {why}", details=failed)
        # The plan goes on without what blocked this round if it can (e.g. a party that gave
        # notice is left out of the next request); otherwise it stops, saying why.
        plan_continue(plan=round.plan)
        return round
    # Who takes part is decided before anything is reserved: a partner whose agent is offline
    # is left out (nothing reserved on its dataset) while enough partners remain.
    too_few = round_roster_choose(round=round)
    if too_few:
        event = f"Round {round.number} of '{round.plan.name}' blocked at start: {too_few}"
        _transition(round, Status.BLOCKED, reason=too_few, actor=actor, event=event, details={"failed": ["agents_online"]})
        return round
    try:
        # The check above and this reservation share one transaction; budget_reserve locks
        # every dataset's budget row, so a concurrent round cannot slip in between.
        budget_reserve(round=round, actor=actor)
    except BudgetExceeded as exc:
        _transition(round, Status.BLOCKED, reason=str(exc), actor=actor, event=str(exc))
        # Budget runs out for good (ARCHITECTURE.md, Ledger 2): the plan stops, saying why.
        plan_blocked(plan=round.plan, round=round, permanent=True)
        return round
    _transition(round, Status.RUNNING, started_at=timezone.now())
    # The roster, the threshold and the global model are fixed; tickets are signed in the
    # transaction that reserved the budget (ARCHITECTURE.md, Trust 1).
    model = latest_model(round.plan)
    opened = protocol_open(round=round, model=model)
    if opened.next is Next.ABORT:
        return round_abort(actor=None, round=round, reason=opened.reason, retryable=True)
    round_tickets_issue(round=round, links=list(opened.links), model=model, config=opened.config)
    _phase_open(round, opened.phase)
    left_out = (round.metrics or {}).get("left_out") or {}
    # Entered RUNNING above; the event is recorded once the protocol is open.
    event_record(
        kind=EVENT_KINDS[Status.RUNNING],
        message=f"Round {round.number} of '{round.plan.name}' started; budget reserved."
        + "".join(f" {slug} left out: {r['reason']}." for slug, r in sorted(left_out.items())),
        actor=actor,
        agreement=round.plan.agreement,
        round=round,
    )
    return round


def round_close_phase(*, round_id: int, phase: str, now=None) -> str:
    """Close `phase` of the round if it is still the current one (idempotent), acting on the
    protocol's outcome. Returns what happened, for the task's log."""
    with transaction.atomic():
        round = TrainingRound.objects.select_for_update().select_related("plan__agreement").filter(pk=round_id).first()
        if round is None or round.phase != phase or round.status not in (Status.RUNNING, Status.AGGREGATING):
            return "already closed"
        outcome = protocol_close(round=round, phase=phase, now=now or timezone.now())
        if outcome.next is Next.WAITING:
            return "waiting"
        if outcome.next is Next.EVALUATED:
            _complete(round)
            return "completed"
        if outcome.next is Next.ABORT:
            round_abort(actor=None, round=round, reason=outcome.reason, retryable=True)
            return "aborted"
        if outcome.next is Next.AGGREGATE:
            round.phase, round.phase_deadline = AGGREGATE, None
            round.save(update_fields=["phase", "phase_deadline"])
            enqueue.after_commit(enqueue.ROUND_AGGREGATE, round_id)
            return "aggregating"
        # ADVANCED: the next phase opens; the masked inputs are in once masked_input closes.
        _phase_open(round, outcome.phase, status=Status.AGGREGATING if phase == MASKED else None)
        return f"opened {round.phase}"


def round_aggregate(*, round_id: int) -> str:
    """Unmask the sum, FedAvg, store the new global model (aggregation queue), then evaluate
    or complete. The slow work runs outside any lock (services/aggregation.py); the result
    is written with a compare-and-set on phase == aggregate, so a redelivered task writes it once."""
    round = TrainingRound.objects.select_related("plan").filter(pk=round_id).first()
    if round is None or round.phase != AGGREGATE:
        return "not aggregating"
    result = aggregate_compute(round)
    if result.outcome == "already aggregated":
        return result.outcome
    if result.outcome == "failed":
        with transaction.atomic():
            locked = TrainingRound.objects.select_for_update().get(pk=round_id)
            if locked.phase == AGGREGATE:
                round_abort(actor=None, round=locked, reason=result.reason, status=Status.FAILED)
        return "failed"
    with transaction.atomic():
        round = TrainingRound.objects.select_for_update().select_related("plan").get(pk=round_id)
        if round.phase != AGGREGATE:
            return "already aggregated"
        aggregate_store(round=round, aggregate=result)
        if round.plan.eval_noise_multiplier:
            _phase_open(round, EVALUATE)
            return "evaluating"
        _complete(round)
    return "completed"


def _complete(round: TrainingRound) -> None:
    """AGGREGATING -> COMPLETED under the caller's lock: commit the budget, record the
    accuracy, request the plan's next round or stop the plan saying why."""
    accuracy = results_record(round)
    round.metrics["receipts_missing"] = receipts_missing(round)

    def settle():
        round_budget_settle(round=round)
        ModelVersion.objects.filter(round=round).update(metrics={**round.metrics})

    _transition(
        round,
        Status.COMPLETED,
        phase="",
        phase_deadline=None,
        then=settle,
        event=f"Round {round.number} of '{round.plan.name}' completed with {len(round.metrics.get('contributors', []))} contributors"
        + (f", accuracy {accuracy:.3f}." if accuracy is not None else "."),
    )
    TrainingPlan.objects.filter(pk=round.plan_id).update(consecutive_failures=0, retry_at=None)
    plan_continue(plan=round.plan)


@transaction.atomic
def round_abort(
    *, actor, round: TrainingRound, reason: str, status: str = Status.ABORTED, retryable: bool = False
) -> TrainingRound:
    """Stop a live round (ABORTED, or FAILED for an error); a round already final is returned
    unchanged.

    The budget-release invariant (ARCHITECTURE.md, Ledger 2): a budget is given back only when
    the coordinator can show that nothing computed from that dataset left its partner; when in
    doubt it stays spent.
    - Not yet RUNNING: nothing was reserved, nothing is written to the ledger.
    - RUNNING before the masked-input phase opened (phase "", advertise_keys, share_keys): no
      partner has sent anything computed from its data; the whole round is RELEASED.
    - From masked_input on (RUNNING or AGGREGATING), per dataset (services/settlement.py): a
      partner whose masked input the coordinator received stays charged (COMMIT, with its
      ticket hash) whatever happens next; one whose masked input never came is RELEASED, the
      release naming why. Receipts that never came are flagged on the round, not released.

    Then the plan's retry policy: a `retryable` abort (dropouts below the threshold, a missed
    deadline) is tried again after the plan's backoff, up to its limit of failed tries in a
    row; any other ends with the plan paused, saying why (services.plans.plan_round_failed)."""
    from accounting.services.budget import budget_release

    round = TrainingRound.objects.select_for_update().select_related("plan__agreement").get(pk=round.pk)
    if round.status not in TrainingRound.LIVE_STATES:
        return round
    had_reservation = round.status in (Status.RUNNING, Status.AGGREGATING)
    # An update may have left a partner once the masked-input phase opened: then the budget
    # stays spent. Before that, no partner has sent anything computed from its data.
    no_update_released = round.status == Status.RUNNING and round.phase in ("", "advertise_keys", "share_keys")

    def settle():
        if not had_reservation:
            return
        if no_update_released:
            budget_release(round=round, actor=actor, reason=reason, no_update_released=True)
            return
        # Per dataset: those whose masked input was received stay charged; the others
        # sent nothing computed from their data and are released, naming why.
        round_budget_settle(round=round, actor=actor)
        # Charged whether or not the partners' receipts came; the missing ones are flagged.
        round.metrics = {**(round.metrics or {}), "receipts_missing": receipts_missing(round)}
        round.save(update_fields=["metrics"])

    _transition(round, status, reason=reason, actor=actor, then=settle, event=f"Round {round.number} of '{round.plan.name}' {status}: {reason}")
    plan_round_failed(round=round, retryable=retryable and status == Status.ABORTED, actor=actor)
    return round


# --- the plan's next round ----------------------------------------------------------------------


def plan_continue(*, plan: TrainingPlan, actor=None) -> TrainingRound | None:
    """After a round: request the next one, or finish the plan; a next round that is blocked
    pauses or stops the plan, saying why (never "active with nothing live")."""
    plan = TrainingPlan.objects.select_for_update().get(pk=plan.pk)
    if plan.status != TrainingPlan.Status.ACTIVE:
        return None
    if plan_complete_if_done(plan):
        return None
    if plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists():
        return None  # e.g. someone requested a round by hand during a retry's backoff
    # A blocked request pauses or stops the plan itself (round_request, plans.plan_blocked).
    return round_request(actor=actor, plan=plan, system=True)


@transaction.atomic
def plan_retry(*, plan_id: int, now=None) -> TrainingRound | None:
    """The retry task (and the beat sweep, if the task was lost): request the next try once
    the backoff is over. Idempotent: a second delivery finds retry_at cleared."""
    plan = TrainingPlan.objects.select_for_update().filter(pk=plan_id).first()
    now = now or timezone.now()
    if plan is None or plan.status != TrainingPlan.Status.ACTIVE or plan.retry_at is None or plan.retry_at > now:
        return None
    plan.retry_at = None
    plan.save(update_fields=["retry_at"])
    return plan_continue(plan=plan)


@transaction.atomic
def plan_resume(*, actor, plan: TrainingPlan):
    """PAUSED -> ACTIVE, the count of failed tries starting again from 0, and the next round
    requested at once (it needs the same approvals and checks as any round). Returns the
    plan and that round (None when a round is still live); a round that blocks again
    pauses or stops the plan again, saying why."""
    plan = plan_reactivate(actor=actor, plan=plan)
    if plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).exists():
        return plan, None
    nxt = plan_continue(plan=plan, actor=actor)
    plan.refresh_from_db()
    return plan, nxt
