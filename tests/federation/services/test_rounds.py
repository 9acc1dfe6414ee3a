"""services/rounds.py: requests, decisions and standing approvals refuse bad input and change nothing;
every status change goes through the one transition function, which refuses a move the state machine does not allow."""


import re
from pathlib import Path

import pytest
from django.utils import timezone

from federation.models import GovernanceEvent, TrainingRound
from federation.services import rounds
from federation.services.rounds import round_approve, round_reject, round_request, standing_approval_give
from fedgov.errors import InvalidState, ValidationFailed
from tests.tamper import force_update

pytestmark = pytest.mark.django_db


def test_only_one_live_round_per_plan_and_idempotency_key(cast):
    first = round_request(actor=cast.admin, plan=cast.plan, idempotency_key="abc")
    again = round_request(actor=cast.admin, plan=cast.plan, idempotency_key="abc")
    assert first.pk == again.pk
    with pytest.raises(InvalidState, match="still awaiting approval"):
        round_request(actor=cast.admin, plan=cast.plan)
    assert TrainingRound.objects.count() == 1


def test_rejection_needs_a_reason_and_stops_the_round(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    with pytest.raises(ValidationFailed, match="Say why"):
        round_reject(actor=cast.rep_a, round=rnd, organisation=cast.org_a, reason="  ")
    round_reject(actor=cast.rep_a, round=rnd, organisation=cast.org_a, reason="audit pending")
    rnd.refresh_from_db()
    assert rnd.status == TrainingRound.Status.REJECTED and "audit pending" in rnd.reason
    with pytest.raises(InvalidState):
        round_approve(actor=cast.rep_b, round=rnd, organisation=cast.org_b)


def test_deciding_twice_is_refused(cast):
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    round_approve(actor=cast.rep_a, round=rnd, organisation=cast.org_a)
    with pytest.raises(InvalidState, match="already approved"):
        round_approve(actor=cast.rep_a, round=rnd, organisation=cast.org_a)


@pytest.mark.parametrize(
    "first_ends, next_status",
    [
        (TrainingRound.Status.COMPLETED, TrainingRound.Status.AWAITING_APPROVAL),
        # Blocked when it came to start (a party exited in between, say): it trained
        # nothing and spent no budget, so the approval for one round is still unused.
        (TrainingRound.Status.BLOCKED, TrainingRound.Status.APPROVED),
        (TrainingRound.Status.REJECTED, TrainingRound.Status.APPROVED),
    ],
)
def test_standing_approval_approves_rounds_up_to_its_count_of_rounds_that_ran(cast, first_ends, next_status):
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        standing_approval_give(actor=rep, plan=cast.plan, organisation=org, max_rounds=1)
    rnd = round_request(actor=cast.admin, plan=cast.plan)
    assert rnd.status == TrainingRound.Status.APPROVED
    force_update(TrainingRound, rnd.pk, status=first_ends)
    second = round_request(actor=cast.admin, plan=cast.plan)
    assert second.status == next_status
    # One use each, whichever way: the completed first round, or the approved second one.
    assert [s.rounds_used() for s in cast.plan.standing_approvals.all()] == [1, 1, 1]


def test_standing_approval_must_be_bounded(cast):
    with pytest.raises(ValidationFailed, match="Bound the standing approval"):
        standing_approval_give(actor=cast.rep_a, plan=cast.plan, organisation=cast.org_a)


# --- the one transition function ---------------------------------------------------------------


def test_the_transition_function_refuses_a_move_the_state_machine_does_not_allow(cast):
    """COMPLETED -> RUNNING is refused by the lifecycle itself, before anything is written:
    the round object is left as it was and no event is recorded (the model's own guard, a
    different error, is never reached)."""
    round = round_request(actor=cast.admin, plan=cast.plan)
    force_update(TrainingRound, round.pk, status=TrainingRound.Status.COMPLETED)
    round.refresh_from_db()
    events = GovernanceEvent.objects.count()
    with pytest.raises(rounds.RoundTransitionRefused) as info:
        rounds._transition(round, TrainingRound.Status.RUNNING, started_at=timezone.now(), event="Round started.")
    assert info.value.code == "round_transition_refused"
    assert info.value.details == {"round": round.pk, "old": "completed", "new": "running"}
    assert round.status == TrainingRound.Status.COMPLETED and round.started_at is None
    assert GovernanceEvent.objects.count() == events
    round.refresh_from_db()
    assert round.status == TrainingRound.Status.COMPLETED


@pytest.mark.parametrize("old", [TrainingRound.Status.REJECTED, TrainingRound.Status.ABORTED, TrainingRound.Status.BLOCKED])
def test_no_final_round_moves_again(cast, old):
    round = round_request(actor=cast.admin, plan=cast.plan)
    force_update(TrainingRound, round.pk, status=old)
    round.refresh_from_db()
    for to in TrainingRound.Status.values:
        with pytest.raises(rounds.RoundTransitionRefused):
            rounds._transition(round, to)


def test_a_transition_saves_then_settles_then_records_its_event(cast):
    """A final state sets finished_at; `then` (the budget) runs once the new status is saved
    (the ledger releases only on a final round) and before the event, which is of the kind
    the new status is entered with."""
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == TrainingRound.Status.AWAITING_APPROVAL
    seen = {}

    def then():
        seen["status"] = TrainingRound.objects.get(pk=round.pk).status
        seen["events"] = GovernanceEvent.objects.filter(round=round, kind=GovernanceEvent.Kind.ROUND_ABORTED).count()

    rounds._transition(round, TrainingRound.Status.ABORTED, reason="by hand", event="Round 1 aborted: by hand", then=then)
    assert seen == {"status": TrainingRound.Status.ABORTED, "events": 0}
    round.refresh_from_db()
    assert round.reason == "by hand" and round.finished_at is not None
    event = GovernanceEvent.objects.get(round=round, kind=GovernanceEvent.Kind.ROUND_ABORTED)
    assert event.message == "Round 1 aborted: by hand"


SOURCES = Path(__file__).resolve().parents[3]
STATUS_WRITE = re.compile(r"\b(round|locked|waiting|rnd|r)\.status\s*=[^=]|TrainingRound\.objects[^\n]*\.update\([^)]*\bstatus=")


def test_every_round_status_change_in_the_code_goes_through_the_transition_function():
    """grep federation/ and accounting/ for a round's status written anywhere else."""
    offenders = []
    for package in ("federation", "accounting"):
        for path in (SOURCES / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if STATUS_WRITE.search(line):
                    offenders.append(f"{path.relative_to(SOURCES)}:{number}: {line.strip()}")
    assert offenders == ["federation/services/rounds.py:{}: round.status = to".format(_line_of("round.status = to"))]


def _line_of(text: str) -> int:
    lines = (SOURCES / "federation" / "services" / "rounds.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == text)
