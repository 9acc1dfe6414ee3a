"""Rounds that recover (#16 item 1): the plan's retry policy, pausing and resuming.

Real rounds driven through the services by in-process SecAggClients (no Celery: phases are
closed by calling the close service as the task would, past the deadline; the retry task's
service is called as the task would be once its countdown is over). The budget of every
aborted try follows the ledger invariants (ARCHITECTURE.md, Ledger 2)."""

from __future__ import annotations

import base64
from datetime import timedelta

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from accounting.models import LedgerEntry
from accounting.selectors import dataset_epsilon_spent
from federation import secagg
from federation.models import GovernanceEvent, StandingApproval, TrainingPlan, TrainingRound
from federation.services.agent_rounds import agent_submit, agent_tasks
from federation.services.agents import agent_enrol
from federation.services.plans import plan_pause, plan_retry_policy_set
from federation.services.protocol import ADVERTISE, MASKED, SHARE
from federation.services.rounds import (
    plan_resume,
    plan_retry,
    round_abort,
    round_close_phase,
    round_reject,
    round_request,
    round_start,
)
from federation.services.sweeps import plans_retry_overdue
from federation.services.tokens import token_issue
from fedgov.errors import InvalidState, NotFound, PermissionDenied, ValidationFailed
from harness import simulation
from tests.factories import UserFactory, build_cast

pytestmark = pytest.mark.django_db
Status = TrainingRound.Status
PlanStatus = TrainingPlan.Status


class Fed:
    def __init__(self, tmp_path, **policy):
        table = simulation.default_table()
        parts = simulation.partition(table, 4, tmp_path)
        self.fed = simulation.setup_federation(
            partitions=parts, schema=simulation.schema_for(table, parts[0]), epsilon=8.0, rounds=2, prefix="rt",
            plan_overrides=policy,
        )
        self.plan = self.fed.plan
        self.agents, self.keys = {}, {}
        for i, dataset in enumerate(sorted(self.fed.datasets, key=lambda d: d.organisation.slug)):
            user = get_user_model().objects.get(username=f"rt-agent{i + 1}")
            key = Ed25519PrivateKey.generate()
            agent_enrol(user=user, public_key_hex=key.public_key().public_bytes_raw().hex())
            self.agents[dataset.organisation.slug], self.keys[dataset.organisation.slug] = user, key
        self.rep1 = get_user_model().objects.get(username="rt-rep1")

    def start(self, round: TrainingRound | None = None) -> TrainingRound:
        round = round or round_request(actor=None, plan=self.plan, system=True)
        assert round.status == Status.APPROVED, round.reason  # the standing approvals cover it
        with transaction.atomic():
            round = round_start(round_id=round.pk)
        assert round.status == Status.RUNNING and round.phase == ADVERTISE, round.reason
        return round

    def close(self, round, phase, *, late: bool = True) -> str:
        with transaction.atomic():
            now = timezone.now() + timedelta(hours=1) if late else None
            return round_close_phase(round_id=round.pk, phase=phase, now=now)

    def task(self, slug, phase):
        (task,) = agent_tasks(user=self.agents[slug])
        assert task["phase"] == phase
        return task

    def clients(self) -> dict:
        slugs = sorted(self.agents)
        payload = self.task(slugs[0], ADVERTISE)["payload"]
        cfg = payload["config"]
        config = secagg.RoundConfig(cfg["round_id"], tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])
        identity = {p: bytes.fromhex(k) for p, k in payload["identity_keys"].items()}
        return {s: secagg.SecAggClient(config, party=s, signing_key=self.keys[s], identity_keys=identity) for s in slugs}

    def drop_at_masked_input(self, round, senders: int) -> TrainingRound:
        """Every partner takes part until the masked input; only `senders` of them send it
        (the agent's simulated dropout), and the phase closes at its deadline."""
        slugs = sorted(self.agents)
        clients = self.clients()
        for s in slugs:
            agent_submit(user=self.agents[s], round_id=round.pk, phase=ADVERTISE, body=clients[s].advertise_keys())
        assert self.close(round, ADVERTISE, late=False) == f"opened {SHARE}"
        for s in slugs:
            relay = base64.b64decode(self.task(s, SHARE)["payload"]["relay"])
            agent_submit(user=self.agents[s], round_id=round.pk, phase=SHARE, body=clients[s].share_keys(relay))
        assert self.close(round, SHARE, late=False) == f"opened {MASKED}"
        d = clients[slugs[0]].config.vector_length
        for s in slugs[:senders]:
            relay = base64.b64decode(self.task(s, MASKED)["payload"]["relay"])
            body = clients[s].masked_input(relay, np.zeros(d, np.uint32))
            agent_submit(user=self.agents[s], round_id=round.pk, phase=MASKED, body=body)
        assert self.close(round, MASKED) == "aborted"
        round.refresh_from_db()
        return round

    def drop_at_advertise(self, round) -> TrainingRound:
        """No partner answers the first phase: the round aborts at its deadline."""
        assert self.close(round, ADVERTISE) == "aborted"
        round.refresh_from_db()
        return round

    def refresh(self) -> TrainingPlan:
        self.plan.refresh_from_db()
        return self.plan


@pytest.fixture
def fed(tmp_path):
    return Fed(tmp_path, retry_backoff_seconds=7)


def kinds(round) -> set[str]:
    return set(LedgerEntry.objects.filter(round=round).values_list("kind", flat=True))


def test_a_try_aborted_before_any_update_left_is_retried_after_the_backoff_with_its_budget_released(fed, django_capture_on_commit_callbacks):
    first = fed.start()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with transaction.atomic():
            first = fed.drop_at_advertise(first)
    assert first.status == Status.ABORTED and "AdvertiseKeys" in first.reason
    assert kinds(first) == {"RESERVE", "RELEASE"}  # nothing left a partner: released
    assert all(dataset_epsilon_spent(dataset=d) == 0 for d in fed.fed.datasets)
    plan = fed.refresh()
    assert plan.status == PlanStatus.ACTIVE and plan.consecutive_failures == 1
    assert timedelta(seconds=5) < plan.retry_at - timezone.now() <= timedelta(seconds=7)
    assert callbacks, "the retry task is enqueued after the commit"
    event = GovernanceEvent.objects.filter(kind=GovernanceEvent.Kind.PLAN_RETRY_SCHEDULED).get()
    assert event.round_id == first.pk and "in 7s" in event.message
    # Before the backoff is over (an early or repeated delivery) nothing happens.
    assert plan_retry(plan_id=plan.pk) is None
    retry = plan_retry(plan_id=plan.pk, now=timezone.now() + timedelta(seconds=8))
    assert retry is not None and retry.number == 2 and retry.status == Status.APPROVED
    assert plan_retry(plan_id=plan.pk, now=timezone.now() + timedelta(seconds=8)) is None  # once
    assert fed.refresh().retry_at is None
    # A try that released its budget does not use up the standing approvals ("up to 2 rounds").
    assert all(s.rounds_used() == 1 for s in StandingApproval.objects.filter(plan=plan))  # the retry only


def test_a_try_aborted_after_the_masked_input_opened_spends_and_uses_up_only_the_senders(fed):
    round = fed.drop_at_masked_input(fed.start(), senders=2)  # 2 of 4, threshold 3
    assert round.status == Status.ABORTED and "MaskedInput" in round.reason
    # Per dataset (ARCHITECTURE.md, Ledger 2): the two whose masked input came are spent;
    # the two that sent none contributed nothing and are released.
    senders = sorted(fed.agents)[:2]
    for d in fed.fed.datasets:
        mine = set(LedgerEntry.objects.filter(round=round, dataset=d).values_list("kind", flat=True))
        if d.organisation.slug in senders:
            assert mine == {"RESERVE", "COMMIT"} and dataset_epsilon_spent(dataset=d) > 0
        else:
            assert mine == {"RESERVE", "RELEASE"} and dataset_epsilon_spent(dataset=d) == 0
    plan = fed.refresh()
    assert plan.status == PlanStatus.ACTIVE and plan.retry_at is not None
    # The try used up "one of N rounds" of the organisations whose data it spent, and not of
    # those whose budget it released.
    used = {s.organisation.slug: s.rounds_used() for s in StandingApproval.objects.filter(plan=plan)}
    assert used == {slug: (1 if slug in senders else 0) for slug in used} and len(used) == len(fed.fed.datasets)
    # A retry does not eat into the plan's rounds: 2 completed rounds are still to come.
    assert plan.rounds.filter(status=Status.COMPLETED).count() == 0 and plan.rounds_total == 2


def test_the_plan_pauses_after_its_limit_of_failed_tries_in_a_row_and_resumes(tmp_path):
    fed = Fed(tmp_path, max_consecutive_failures=2, retry_backoff_seconds=0)
    fed.drop_at_advertise(fed.start())
    later = timezone.now() + timedelta(seconds=1)
    second = fed.drop_at_advertise(fed.start(plan_retry(plan_id=fed.plan.pk, now=later)))
    plan = fed.refresh()
    assert plan.status == PlanStatus.PAUSED and plan.paused_at is not None and plan.retry_at is None
    assert plan.stopped_reason.startswith("2 tries in a row failed") and f"round {second.number} aborted" in plan.stopped_reason
    assert GovernanceEvent.objects.filter(kind=GovernanceEvent.Kind.PLAN_PAUSED).count() == 1
    assert plan_retry(plan_id=plan.pk, now=later) is None  # a paused plan is not retried
    with pytest.raises(InvalidState, match="paused: 2 tries in a row"):
        round_request(actor=fed.fed.admin, plan=plan)
    # Someone outside the plan cannot resume it.
    with pytest.raises((PermissionDenied, NotFound)):
        plan_resume(actor=UserFactory(username="stranger"), plan=plan)
    # A representative of a party resumes it: the count starts again, the next round is requested.
    plan, nxt = plan_resume(actor=fed.rep1, plan=plan)
    assert plan.status == PlanStatus.ACTIVE and plan.consecutive_failures == 0 and plan.stopped_reason == ""
    assert nxt.number == 3 and nxt.status == Status.APPROVED
    assert GovernanceEvent.objects.filter(kind=GovernanceEvent.Kind.PLAN_RESUMED, actor=fed.rep1).exists()
    with pytest.raises(InvalidState, match="only a paused plan"):
        plan_resume(actor=fed.rep1, plan=plan)


def test_an_error_is_not_retried_automatically_the_plan_pauses_saying_why(fed):
    round = fed.start()
    with transaction.atomic():
        round_abort(actor=None, round=round, reason="Unmasking failed: a share does not verify", status=Status.FAILED)
    plan = fed.refresh()
    assert plan.status == PlanStatus.PAUSED and plan.retry_at is None
    assert "Not retried automatically" in plan.stopped_reason and "Unmasking failed" in plan.stopped_reason


def test_the_beat_sweep_reenqueues_a_retry_whose_task_was_lost(fed):
    fed.drop_at_advertise(fed.start())
    assert plans_retry_overdue() == []  # not due yet
    assert plans_retry_overdue(now=timezone.now() + timedelta(seconds=60)) == [fed.plan.pk]
    plan_pause(actor=fed.fed.admin, plan=fed.plan, reason="look first")
    assert plans_retry_overdue(now=timezone.now() + timedelta(seconds=60)) == []


def test_a_blocked_request_pauses_the_plan_with_the_reason():
    cast = build_cast()
    type(cast.dataset_a).objects.filter(pk=cast.dataset_a.pk).update(centred=True)  # schemas differ
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == Status.BLOCKED
    cast.plan.refresh_from_db()
    assert cast.plan.status == PlanStatus.PAUSED
    assert cast.plan.stopped_reason.startswith(f"Round {round.number} blocked: ") and "feature_schema" in cast.plan.stopped_reason


def test_a_request_blocked_for_budget_stops_the_plan():
    cast = build_cast(budget=0.01)
    round = round_request(actor=cast.admin, plan=cast.plan)
    assert round.status == Status.BLOCKED
    cast.plan.refresh_from_db()
    assert cast.plan.status == PlanStatus.STOPPED and "budget" in cast.plan.stopped_reason


def test_a_rejected_round_pauses_the_plan():
    cast = build_cast()
    round = round_request(actor=cast.admin, plan=cast.plan)
    round_reject(actor=cast.rep_b, round=round, organisation=cast.org_b, reason="not this quarter")
    cast.plan.refresh_from_db()
    assert cast.plan.status == PlanStatus.PAUSED and "not this quarter" in cast.plan.stopped_reason


def test_pause_needs_a_reason_and_a_party_and_is_recorded():
    cast = build_cast()
    with pytest.raises(ValidationFailed):
        plan_pause(actor=cast.admin, plan=cast.plan, reason="  ")
    with pytest.raises(PermissionDenied):
        plan_pause(actor=cast.auditor, plan=cast.plan, reason="audit")
    plan = plan_pause(actor=cast.rep_a, plan=cast.plan, reason="model review")
    assert plan.status == PlanStatus.PAUSED and "model review" in plan.stopped_reason
    with pytest.raises(InvalidState):
        plan_pause(actor=cast.admin, plan=plan, reason="again")


def test_the_retry_policy_changes_only_through_its_service_with_an_event():
    cast = build_cast()
    with pytest.raises(ValidationFailed):
        plan_retry_policy_set(actor=cast.admin, plan=cast.plan, max_consecutive_failures=0)
    plan = plan_retry_policy_set(actor=cast.rep_a, plan=cast.plan, max_consecutive_failures=5, retry_backoff_seconds=60)
    assert (plan.max_consecutive_failures, plan.retry_backoff_seconds) == (5, 60)
    event = GovernanceEvent.objects.get(kind=GovernanceEvent.Kind.PLAN_POLICY_CHANGED)
    assert "pause after 5 failed tries in a row (was 3)" in event.message


def _api(user) -> APIClient:
    _, key = token_issue(actor=user, user=user, scopes=["read", "trigger", "approve"], name="retry")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_the_plan_api_shows_the_policy_and_pauses_and_resumes():
    cast = build_cast()
    api = _api(cast.rep_a)
    body = api.get(f"/api/v1/plans/{cast.plan.pk}/").json()
    assert (body["max_consecutive_failures"], body["retry_backoff_seconds"], body["status"]) == (3, 30, "active")
    response = api.post(f"/api/v1/plans/{cast.plan.pk}/pause/", {"reason": ""}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "validation_failed"
    response = api.post(f"/api/v1/plans/{cast.plan.pk}/pause/", {"reason": "data refresh"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "paused", response.content
    assert "data refresh" in response.json()["stopped_reason"]
    response = api.post(f"/api/v1/plans/{cast.plan.pk}/resume/")
    assert response.status_code == 200 and response.json()["status"] == "active", response.content
    assert cast.plan.rounds.filter(status__in=TrainingRound.LIVE_STATES).count() == 1  # requested on resume
    response = api.post(f"/api/v1/plans/{cast.plan.pk}/retry-policy/", {"max_consecutive_failures": 0}, format="json")
    assert response.status_code == 400


def test_the_plan_api_takes_the_policy_at_creation_and_refuses_bad_values():
    cast = build_cast()
    api = _api(cast.admin)
    base = {
        "agreement": cast.agreement.pk, "name": "P2", "purpose": cast.plan.purpose, "datasets": [d.pk for d in cast.datasets],
        "model_spec": {"kind": "logreg"}, "noise_multiplier": 1.0, "clip_norm": 1.0,
        # Every schedule value given (the planner is not what this test is about), and a plan
        # the cast's small budgets cannot pay for in full is accepted as partial.
        "sampling_rate": None, "batch_size": 32, "local_steps": 5, "learning_rate": 0.5, "momentum": 0.0,
        "server_learning_rate": 1.0, "server_optimizer": {}, "eval_noise_multiplier": None, "allow_partial": True,
    }
    before = TrainingPlan.objects.count()
    response = api.post("/api/v1/plans/", {**base, "retry_backoff_seconds": -1}, format="json")
    assert response.status_code == 400 and TrainingPlan.objects.count() == before
    response = api.post("/api/v1/plans/", {**base, "max_consecutive_failures": 5, "retry_backoff_seconds": 2}, format="json")
    assert response.status_code == 201, response.content
    assert (response.json()["max_consecutive_failures"], response.json()["retry_backoff_seconds"]) == (5, 2)


def test_the_plan_page_says_why_it_is_paused_and_resumes_it():
    from django.test import Client

    cast = build_cast()
    plan_pause(actor=cast.admin, plan=cast.plan, reason="data refresh at org B")
    rep = Client()
    rep.force_login(cast.rep_a)
    page = rep.get(f"/plans/{cast.plan.pk}/").content.decode()
    assert 'id="plan-paused"' in page and "data refresh at org B" in page and 'id="resume-plan"' in page
    auditor = Client()
    auditor.force_login(cast.auditor)
    page = auditor.get(f"/plans/{cast.plan.pk}/").content.decode()
    assert "data refresh at org B" in page and 'id="resume-plan"' not in page  # sees why, cannot resume
    assert auditor.post(f"/plans/{cast.plan.pk}/resume/").status_code == 403
    response = rep.post(f"/plans/{cast.plan.pk}/resume/")
    assert response.status_code == 302
    cast.plan.refresh_from_db()
    assert cast.plan.status == PlanStatus.ACTIVE and cast.plan.rounds.count() == 1


def test_the_plan_form_shows_the_policy_defaults_and_takes_or_refuses_values():
    from django.test import Client

    cast = build_cast()
    admin = Client()
    admin.force_login(cast.admin)
    page = admin.get("/plans/new/").content.decode()
    assert 'name="max_consecutive_failures" value="3"' in page and 'name="retry_backoff_seconds" value="30"' in page
    post = {
        "agreement": cast.agreement.pk, "name": "Policy plan", "purpose": cast.plan.purpose, "datasets": [d.pk for d in cast.datasets],
        "model_kind": "logreg", "rounds_total": "3", "noise_multiplier": "1.2", "clip_norm": "1.0", "batch_size": "32",
        "local_steps": "5", "learning_rate": "0.5", "momentum": "0", "server_learning_rate": "1", "phase_timeout_seconds": "60",
        # Values set by hand (empty optional ones mean none, not the planner's), and a plan the
        # cast's small budgets cannot pay for in full is accepted as partial.
        "proposed": "on", "allow_partial": "on",
    }
    before = TrainingPlan.objects.count()
    response = admin.post("/plans/new/", {**post, "max_consecutive_failures": "0"})
    assert response.status_code == 200 and TrainingPlan.objects.count() == before
    assert "greater than or equal to 1" in response.content.decode()
    assert admin.post("/plans/new/", {**post, "max_consecutive_failures": "4", "retry_backoff_seconds": "5"}).status_code == 302
    plan = TrainingPlan.objects.get(name="Policy plan")
    assert (plan.max_consecutive_failures, plan.retry_backoff_seconds) == (4, 5)
    assert admin.post("/plans/new/", {**post, "name": "Default policy"}).status_code == 302
    plan = TrainingPlan.objects.get(name="Default policy")
    assert (plan.max_consecutive_failures, plan.retry_backoff_seconds) == (3, 30)
