"""Rounds that recover (#16 item 1), on the real stack: Redis, gunicorn, a Celery worker and
beat, partner agents over HTTP.

One agent of three is killed (SIGKILL) for the length of two tries; with a secure-aggregation
threshold of 3 no try can complete without it. Each try aborts at its deadline, the retry
task requests the next after the plan's backoff, and after two failed tries in a row the plan
is paused, saying why. The agent comes back with its state directory, a representative
resumes the plan, and it completes. The ledger holds: every aborted try released its budget
(no update had left a partner) and no dataset is over its budget."""

from __future__ import annotations

import time

import pytest

from accounting.models import LedgerEntry
from federation.models import GovernanceEvent, TrainingPlan, TrainingRound
from harness import simulation
from harness.localstack import kill_hard, local_stack

from .test_rounds import assert_ledger_sound, make_federation, start_agents

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("stack")]


def wait_status(plan: TrainingPlan, status: str, timeout: float, stack) -> TrainingPlan:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plan.refresh_from_db()
        if plan.status == status:
            return plan
        time.sleep(0.2)
    for r in plan.rounds.order_by("number"):
        print(f"round {r.number}: {r.status} phase={r.phase} reason={r.reason!r}")
    print(stack.logs()[-8000:])
    raise AssertionError(f"plan is {plan.status} ({plan.stopped_reason!r}), not {status}, after {timeout:.0f}s")


def test_an_agent_away_for_two_tries_pauses_the_plan_which_resumes_and_completes_when_it_is_back(tmp_path):
    from federation.services.rounds import plan_resume, round_request

    # The noise pays for four tries, not two: the coordinator releases the aborted tries, but a
    # partner's own ledger never hears of the abort and keeps their reservations open (counted
    # as spent, docs/PARTNER-LEDGER.md), so two rounds after two aborted tries must fit there too.
    d = simulation.DEFAULT_PLAN
    z = simulation.calibrate_noise(
        q=simulation.SAMPLING_RATE, K=d["local_steps"], rounds=4, epsilon=8.0, delta=1e-5, eval_sigma=d["eval_noise_multiplier"]
    )
    fed = make_federation(
        tmp_path, partners=3, rounds=2,
        overrides={"noise_multiplier": z, "secagg_threshold": 3, "max_consecutive_failures": 2, "retry_backoff_seconds": 1},
    )
    TrainingPlan.objects.filter(pk=fed.plan.pk).update(phase_timeout_seconds=10)  # a try waits 10 s for the absent agent
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)
        away = stack.procs["agent-3"]
        kill_hard(away.popen)
        round_request(actor=fed.admin, plan=fed.plan)
        plan = wait_status(fed.plan, TrainingPlan.Status.PAUSED, 120, stack)
        tries = list(plan.rounds.order_by("number"))
        assert [r.status for r in tries] == [TrainingRound.Status.ABORTED] * 2, [(r.status, r.reason) for r in tries]
        assert all("threshold is 3" in r.reason or "needs 3" in r.reason for r in tries), [r.reason for r in tries]
        assert plan.stopped_reason.startswith("2 tries in a row failed"), plan.stopped_reason
        assert GovernanceEvent.objects.filter(kind=GovernanceEvent.Kind.PLAN_RETRY_SCHEDULED, round=tries[0]).exists()
        for r in tries:  # nothing had left a partner: each try's budget was released
            assert set(LedgerEntry.objects.filter(round=r).values_list("kind", flat=True)) == {"RESERVE", "RELEASE"}
        time.sleep(3)
        assert plan.rounds.count() == 2  # paused: no further try is requested

        # The agent is back (same token, same state directory) and a representative resumes.
        slug = sorted(fed.tokens)[2]
        stack.agent(name="agent-3-back", token=fed.tokens[slug], data=fed.partitions[2], state_dir=tmp_path / "agents" / slug, poll_wait=2)
        rep = fed.plan.datasets.order_by("id").first().organisation.memberships.get(role="representative").user
        plan, nxt = plan_resume(actor=rep, plan=plan)
        assert plan.status == TrainingPlan.Status.ACTIVE and nxt is not None and nxt.number == 3
        plan = simulation.wait_for_plan(fed.plan, timeout=180)
    assert plan.status == TrainingPlan.Status.COMPLETED, plan.stopped_reason
    statuses = list(plan.rounds.order_by("number").values_list("status", flat=True))
    assert statuses == ["aborted", "aborted", "completed", "completed"], statuses
    assert plan.model_versions.count() == 3  # v0 and one per completed round
    assert_ledger_sound(fed)
