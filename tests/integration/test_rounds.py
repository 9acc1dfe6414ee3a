"""Rounds end to end through the real stack: Redis, Celery worker processes, gunicorn and
partner agents talking HTTP on loopback. After each scenario the ledger verifies and no
dataset has spent more than its budget."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command

from federation.models import RoundParticipant, TrainingPlan, TrainingRound
from harness import simulation
from harness.localstack import kill_hard, local_stack, start_redis, start_worker, stop, wait_for_port

from .lossy_proxy import LossyProxy

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("stack")]


def make_federation(tmp_path, *, partners=3, rounds=2, epsilon=8.0, overrides=None):
    table = simulation.default_table()
    parts = simulation.partition(table, partners, tmp_path / "data")
    table.write(tmp_path / "all.csv")
    schema = simulation.schema_for(table, tmp_path / "all.csv")
    fed = simulation.setup_federation(
        partitions=parts, schema=schema, epsilon=epsilon, rounds=rounds, plan_overrides=overrides, phase_timeout=20
    )
    return fed


def start_agents(stack, fed, tmp_path, dropout=None):
    for i, (slug, token) in enumerate(fed.tokens.items()):
        stack.agent(name=f"agent-{i + 1}", token=token, data=fed.partitions[i], state_dir=tmp_path / "agents" / slug,
                    dropout=(dropout or {}).get(i, 0.0), poll_wait=2)
    simulation.wait_for_agents(fed, timeout=60)


def assert_ledger_sound(fed):
    from accounting.selectors import dataset_epsilon_spent

    call_command("verify_ledger")  # raises SystemExit / CommandError on a bad chain
    for d in fed.plan.datasets.all():
        assert dataset_epsilon_spent(dataset=d) <= d.epsilon_budget + 1e-9


def run(fed, stack, timeout=180):
    from federation.services.rounds import round_request

    round_request(actor=fed.admin, plan=fed.plan)
    return wait(fed, stack, timeout)


def wait(fed, stack, timeout):
    """wait_for_plan; on a timeout, print the rounds and what the processes logged."""
    try:
        return simulation.wait_for_plan(fed.plan, timeout=timeout)
    except TimeoutError:
        for r in fed.plan.rounds.order_by("number"):
            print(f"round {r.number}: {r.status} phase={r.phase} reason={r.reason!r}")
        print(stack.logs()[-12000:])
        raise


def test_a_plan_of_several_rounds_completes(tmp_path):
    fed = make_federation(tmp_path, rounds=3)
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)
        plan = run(fed, stack)
    assert plan.status == TrainingPlan.Status.COMPLETED, plan.stopped_reason
    rounds = list(plan.rounds.order_by("number"))
    assert [r.status for r in rounds] == ["completed"] * 3
    assert plan.model_versions.count() == 4  # v0 and one per round, each exactly once
    assert all(len(r.metrics["contributors"]) == 3 for r in rounds)
    assert_ledger_sound(fed)


def test_a_dropout_during_masked_input_leaves_the_survivors_sum(tmp_path):
    fed = make_federation(tmp_path, partners=4, rounds=1)
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path, dropout={0: 1.0})  # partner 1 never sends its masked input
        plan = run(fed, stack)
    rnd = plan.rounds.get()
    assert rnd.status == TrainingRound.Status.COMPLETED, rnd.reason
    assert len(rnd.metrics["contributors"]) == 3 and len(rnd.metrics["dropouts"]) == 1
    assert rnd.participant_links.filter(status=RoundParticipant.Status.DROPPED).count() == 1
    assert_ledger_sound(fed)


def test_an_agent_whose_messages_are_lost_sends_the_same_bytes_again_and_the_round_completes(tmp_path):
    """Partner 1 talks through a lossy proxy: the answer to its masked input is lost (the
    coordinator got it; the retry is a replay), and its share_keys POSTs vanish for 3 s, so
    it gives up (--send-retry 1) and waits to be asked again. Nobody drops out."""
    fed = make_federation(tmp_path, rounds=1)
    with local_stack(log_dir=tmp_path / "logs") as stack, LossyProxy(
        stack.server, answer_lost={"masked_input", "evaluate"}, request_lost={"share_keys"}, request_lost_for=3.0
    ) as proxy:
        for i, (slug, token) in enumerate(fed.tokens.items()):
            stack.agent(
                name=f"agent-{i + 1}", token=token, data=fed.partitions[i], state_dir=tmp_path / "agents" / slug, poll_wait=2,
                **({"server": proxy.url, "send_retry": 1.0} if i == 0 else {}),
            )
        simulation.wait_for_agents(fed, timeout=60)
        plan = run(fed, stack)
        rnd = plan.rounds.get()
        # The retry of a message whose answer was lost meets the copy the coordinator holds
        # (`replay`), or, when that copy was the last one the phase waited for, a closed phase.
        # The agent names rounds by their id, which is not the round's number.
        delivered = {
            phase: (f"the coordinator already had our {phase} message", f"round {rnd.pk}: {phase} is closed")
            for phase in ("masked_input", "evaluate")
        }
        deadline = time.monotonic() + 30
        while True:
            log = stack.procs["agent-1"].log.read_text()
            if all(any(line in log for line in lines) for lines in delivered.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert proxy.count("answer_lost") == 2 and proxy.count("request_lost") >= 1, proxy.events
    rnd.refresh_from_db()
    assert rnd.status == TrainingRound.Status.COMPLETED, rnd.reason
    # Partner 1's lost messages still counted: nobody dropped out, nobody was counted twice.
    assert len(rnd.metrics["contributors"]) == 3 and not rnd.metrics["dropouts"]
    for phase, lines in delivered.items():
        assert any(line in log for line in lines), (phase, log[-3000:])
    assert "the coordinator asks for share_keys again; sending the same" in log
    assert log.count("sending advertise_keys") == 1  # trained once: one noisy release
    assert_ledger_sound(fed)


def test_a_budget_that_runs_out_stops_the_plan_with_the_reason(tmp_path):
    # Noise fixed so one round costs ~2.5-4 epsilon: a budget of 6 pays for one round, not two.
    # Such a plan is refused at definition unless it is defined as partial (services.plans).
    fed = make_federation(
        tmp_path, rounds=5, epsilon=6.0,
        overrides={"noise_multiplier": 1.2, "local_steps": 15, "eval_noise_multiplier": None, "allow_partial": True},
    )
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)
        plan = run(fed, stack)
    assert plan.status == TrainingPlan.Status.STOPPED
    assert "budget exhausted for dataset" in plan.stopped_reason and "next round needs" in plan.stopped_reason
    assert plan.rounds.filter(status="completed").count() >= 1
    assert plan.rounds.order_by("number").last().status == TrainingRound.Status.BLOCKED
    assert_ledger_sound(fed)


def test_a_worker_killed_during_aggregation_completes_the_round_exactly_once(tmp_path):
    fed = make_federation(tmp_path, rounds=1)
    with local_stack(log_dir=tmp_path / "logs", workers=0) as stack:
        # Rounds and aggregation on separate workers, so the aggregation one can be killed.
        stack.add(start_worker(stack.env, stack.log_dir, name="rounds", queues="fedgov.default,fedgov.rounds,fedgov.deadlines", concurrency=1))
        agg = stack.add(start_worker(stack.env, stack.log_dir, name="agg1", queues="fedgov.aggregation", concurrency=1))
        kill_hard(agg.popen)  # dead before the task arrives: the task waits in Redis
        start_agents(stack, fed, tmp_path)
        from federation.services.rounds import round_request

        round_request(actor=fed.admin, plan=fed.plan)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not TrainingRound.objects.filter(plan=fed.plan, phase="aggregate").exists():
            time.sleep(0.1)
        assert TrainingRound.objects.filter(plan=fed.plan, phase="aggregate").exists(), stack.logs()[-5000:]
        # A worker takes the task, and is SIGKILLed while it holds it; a third one finishes.
        agg2 = stack.add(start_worker(stack.env, stack.log_dir, name="agg2", queues="fedgov.aggregation", concurrency=1))
        time.sleep(1.5)
        kill_hard(agg2.popen)
        stack.add(start_worker(stack.env, stack.log_dir, name="agg3", queues="fedgov.aggregation", concurrency=1))
        plan = simulation.wait_for_plan(fed.plan, timeout=150)
    rnd = plan.rounds.get()
    assert rnd.status == TrainingRound.Status.COMPLETED, rnd.reason
    assert plan.model_versions.filter(round=rnd).count() == 1
    assert_ledger_sound(fed)


def test_redis_restarted_during_a_round(tmp_path):
    fed = make_federation(tmp_path, rounds=2)
    redis = start_redis(tmp_path / "redis")
    url = f"redis://127.0.0.1:{redis.port}/0"
    try:
        with local_stack(log_dir=tmp_path / "logs", redis_url=url) as stack:
            start_agents(stack, fed, tmp_path)
            from federation.services.rounds import round_request

            round_request(actor=fed.admin, plan=fed.plan)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not TrainingRound.objects.filter(plan=fed.plan, status__in=["running", "aggregating"]).exists():
                time.sleep(0.05)
            stop(redis.popen)  # Redis goes away mid-round...
            time.sleep(2)
            redis = start_redis(tmp_path / "redis", port=redis.port)  # ...and comes back
            wait_for_port(redis.port)
            plan = simulation.wait_for_plan(fed.plan, timeout=150)
    finally:
        stop(redis.popen)
    statuses = list(plan.rounds.values_list("status", flat=True))
    # Each round completes exactly once or aborts cleanly; nothing is left half-way.
    assert set(statuses) <= {"completed", "aborted", "failed"}, statuses
    for r in plan.rounds.all():
        assert plan.model_versions.filter(round=r).count() == (1 if r.status == "completed" else 0)
    assert_ledger_sound(fed)


def test_a_partner_rejecting_stops_the_round(tmp_path):
    from federation.models import StandingApproval
    from federation.services.rounds import round_approve, round_reject, round_request

    fed = make_federation(tmp_path, rounds=2)
    StandingApproval.objects.filter(plan=fed.plan).delete()
    rnd = round_request(actor=fed.admin, plan=fed.plan)
    orgs = [d.organisation for d in fed.plan.datasets.order_by("id")]
    reps = [o.memberships.get(role="representative").user for o in orgs]
    round_approve(actor=reps[0], round=rnd, organisation=orgs[0])
    round_reject(actor=reps[1], round=rnd, organisation=orgs[1], reason="our ethics board has not reviewed this purpose")
    rnd.refresh_from_db()
    assert rnd.status == TrainingRound.Status.REJECTED and "ethics board" in rnd.reason
    assert_ledger_sound(fed)


def test_an_exit_notice_mid_plan_leaves_the_party_out_of_later_rounds(tmp_path):
    from federation.services.agreements import party_give_exit_notice

    fed = make_federation(tmp_path, partners=4, rounds=3)
    leaving = fed.plan.datasets.order_by("id").first().organisation
    rep = leaving.memberships.get(role="representative").user
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)
        from federation.services.rounds import round_request

        round_request(actor=fed.admin, plan=fed.plan)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not fed.plan.rounds.filter(status="completed").exists():
            time.sleep(0.1)
        party_give_exit_notice(actor=rep, agreement=fed.plan.agreement, organisation=leaving)
        plan = wait(fed, stack, timeout=150)
    later = plan.rounds.filter(number__gt=2)
    assert later.exists()
    for r in later:
        assert not r.participants.filter(organisation=leaving).exists()
    assert plan.rounds.filter(status="completed").count() >= 2
    assert_ledger_sound(fed)
