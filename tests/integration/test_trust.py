"""Partners need not trust the coordinator (issue #14), through the real stack: Redis, Celery
workers, gunicorn and partner agents over HTTP on loopback (harness/localstack.py).

(b) two coordinator datasets over one partner file draw on one local budget;
(d) a bundle exported after a real round, with a receipt removed, altered or re-signed by
    another organisation's agent, fails both verifiers, run as an auditor would, naming the entry;
(e) an agent killed (SIGKILL) right after its local RESERVE and restarted neither trains the
    round again nor loses the local charge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from django.core.management import call_command

from accounting import receipts as receipts_mod
from federation.agent.ledger_format import default_data_id
from federation.agent.ledger_view import read_ledger
from federation.agent.runner import CRASH_AFTER_ENV
from federation.models import Membership, RoundParticipant, TrainingPlan, TrainingRound
from harness import simulation
from harness.localstack import ROOT, django_env, local_stack, start_agent

from .test_rounds import assert_ledger_sound, make_federation, start_agents
from .test_tickets import _wait_round, assert_bundle_verifies

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("stack")]


def _local(tmp_path: Path, fed, slug: str) -> dict:
    """The partner's own ledger for its data file, replayed and verified."""
    i = list(fed.tokens).index(slug)
    view = read_ledger(tmp_path / "agents" / slug, verify=True)
    assert view.error is None, view.error
    return view.by_data()[default_data_id(fed.partitions[i])]


def _second_plan(fed) -> TrainingPlan:
    """Every partner registers a second coordinator dataset over the very same records (to the
    coordinator, two budgets), and a second plan runs on them, as the first one did."""
    from federation.services.datasets import dataset_register
    from federation.services.plans import plan_create
    from federation.services.rounds import standing_approval_give

    plan = fed.plan
    again = []
    for d in plan.datasets.select_related("organisation").order_by("slug"):
        rep = Membership.objects.get(organisation=d.organisation, role=Membership.Role.REPRESENTATIVE).user
        again.append(
            dataset_register(
                actor=rep, organisation=d.organisation, agreement=d.agreement, slug=f"{d.slug}-again", name=f"{d.name} (again)",
                record_count=d.record_count, feature_names=d.feature_names, label_name=d.label_name, label_classes=d.label_classes,
                epsilon_budget=d.epsilon_budget, delta=d.delta, feature_bounds=d.feature_bounds, feature_transforms=d.feature_transforms,
                centred=d.centred,
            )
        )
    second = plan_create(
        actor=fed.admin, agreement=plan.agreement, name=f"{plan.name} again", purpose="simulation", datasets=again,
        model_spec=plan.model_spec, noise_multiplier=plan.noise_multiplier, clip_norm=plan.clip_norm, rounds_total=1,
        batch_size=plan.batch_size, sampling_rate=plan.sampling_rate, local_steps=plan.local_steps, learning_rate=plan.learning_rate,
        momentum=plan.momentum, server_learning_rate=plan.server_learning_rate, server_optimizer=plan.server_optimizer,
        eval_noise_multiplier=plan.eval_noise_multiplier, phase_timeout_seconds=plan.phase_timeout_seconds,
    )
    for d in again:
        rep = Membership.objects.get(organisation=d.organisation, role=Membership.Role.REPRESENTATIVE).user
        standing_approval_give(actor=rep, plan=second, organisation=d.organisation, max_rounds=1)
    return second


def test_two_coordinator_datasets_over_one_partner_file_share_the_local_budget_and_the_second_plan_is_refused(tmp_path):
    from accounting.selectors import dataset_epsilon_spent
    from federation.services.rounds import round_request

    fed = make_federation(tmp_path, rounds=1)
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)
        first = _wait_round(fed, {"completed", "aborted", "failed"}, timeout=180, stack=stack,
                            pk=round_request(actor=fed.admin, plan=fed.plan).pk)
        assert first.status == TrainingRound.Status.COMPLETED, first.reason
        second_plan = _second_plan(fed)
        second = round_request(actor=fed.admin, plan=second_plan)
        deadline = time.monotonic() + 120
        while TrainingRound.objects.get(pk=second.pk).status not in {"completed", "aborted", "failed"}:
            assert time.monotonic() < deadline, stack.logs()[-8000:]
            time.sleep(0.2)
        second.refresh_from_db()
        logs = {name: p.log.read_text() for name, p in stack.procs.items() if name.startswith("agent-")}
    # To the coordinator each dataset of the second plan had its whole budget left; each
    # partner knows the records are the ones it already spent on, and declines.
    assert second.status == TrainingRound.Status.ABORTED, second.reason
    links = list(RoundParticipant.objects.filter(round=second).select_related("dataset__organisation"))
    assert len(links) == 3
    for link in links:
        assert link.refusal_code == "local_budget_exceeded", (link.refusal_code, link.refusal_reason)
        assert f"{link.dataset.organisation.slug} declined (local_budget_exceeded:" in second.reason
    for log in logs.values():
        assert f"round {second.pk}: REFUSED (local_budget_exceeded)" in log
        assert f"round {second.pk}: sending advertise_keys" not in log
    for slug in fed.tokens:
        local = _local(tmp_path, fed, slug)
        d1 = fed.plan.datasets.get(organisation__slug=slug)
        d2 = second_plan.datasets.get(organisation__slug=slug)
        # One local account for both coordinator datasets: both budgets were shown to it ...
        shown = {e["payload"]["dataset"] for e in local["entries"] if e["kind"] == "SHOWN"}
        assert shown == {d1.slug, d2.slug}
        # ... and it holds the first round (committed) and no RESERVE of the second.
        assert (local["committed"], local["reserved"], local["released"]) == (1, 0, 0)
        assert {e["round"]["dataset"] for e in local["entries"] if e["kind"] == "RESERVE"} == {d1.slug}
        spent1 = dataset_epsilon_spent(dataset=d1)
        assert local["spent"] == pytest.approx(spent1, rel=1e-9)
        assert 2 * spent1 > local["budget"] == d1.epsilon_budget  # a second round would overdraw the records
        assert dataset_epsilon_spent(dataset=d2) == 0.0  # the coordinator released the refused reservation
    assert_ledger_sound(fed)
    call_command("verify_ledger")


# --- (d) tampered bundles from a real round ------------------------------------------------------


def _verifiers(bundle: Path, pinned_key: str) -> list[subprocess.CompletedProcess]:
    """Both verifiers as separate processes, as an auditor runs them: the management command
    and the standalone module (no Django settings in its environment)."""
    django = django_env()
    env = {k: v for k, v in django.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    return [
        subprocess.run([sys.executable, "manage.py", "verify_ledger", "--bundle", str(bundle), "--public-key", pinned_key],
                       cwd=ROOT, env=django, capture_output=True, text=True, timeout=120),
        subprocess.run([sys.executable, "-m", "accounting.verify", str(bundle), "--public-key", pinned_key],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120),
    ]


def _agent_key(tmp_path: Path, slug: str):
    return serialization.load_pem_private_key((tmp_path / "agents" / slug / "identity_ed25519.pem").read_bytes(), password=None)


def test_a_real_rounds_bundle_with_a_receipt_removed_altered_or_re_signed_fails_both_verifiers_naming_the_entry(tmp_path):
    from accounting import heads
    from accounting.models import LedgerEntry

    fed = make_federation(tmp_path, rounds=1)
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)
        from federation.services.rounds import round_request

        rnd = _wait_round(fed, {"completed", "aborted", "failed"}, timeout=180, stack=stack,
                          pk=round_request(actor=fed.admin, plan=fed.plan).pk)
    assert rnd.status == TrainingRound.Status.COMPLETED, rnd.reason
    assert rnd.metrics["receipts_missing"] == []
    good = tmp_path / "bundle.json"
    call_command("export_ledger", out=str(good), sign_pending=True)
    pin = heads.public_key_hex()
    for result in _verifiers(good, pin):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 receipts verified" in result.stdout
    # Each partner reconciles the bundle with its own ledger, with its agent's state only.
    env = {k: v for k, v in django_env().items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    for slug in fed.tokens:
        result = subprocess.run([sys.executable, "-m", "federation.agent", "reconcile", "--state", str(tmp_path / "agents" / slug),
                                 "--bundle", str(good)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "coordinator charged 1 rounds" in result.stdout and "this ledger committed 1; 1 agree" in result.stdout
        assert "the books agree" in result.stdout
    data = json.loads(good.read_text())
    slugs = list(fed.tokens)
    chain_of = {c["organisation"]: i for i, c in enumerate(data["chains"])}
    victim = data["chains"][chain_of[slugs[0]]]
    seq = LedgerEntry.objects.get(round_id=rnd.pk, dataset_slug=victim["dataset"], kind="COMMIT").seq
    at = f"dataset {victim['dataset']}: entry #{seq} (COMMIT of round {rnd.pk})"
    (receipt,) = victim["receipts"]
    assert receipt["agent_public_key"] == _agent_key(tmp_path, slugs[0]).public_key().public_bytes_raw().hex()
    other_key = _agent_key(tmp_path, slugs[1])  # another organisation's real, enrolled agent key
    cases = {
        "removed": ([], f"{at}: no receipt"),
        "altered": ([{**receipt, "local_ledger_head": "00" * 32}], f"{at}: forged receipt"),
        "re-signed": (
            [receipts_mod.sign_receipt({**receipt, "agent_public_key": other_key.public_key().public_bytes_raw().hex()}, other_key)],
            f"{at}: the receipt is signed by key",
        ),
    }
    for name, (replacement, expected) in cases.items():
        tampered = json.loads(good.read_text())
        tampered["chains"][chain_of[slugs[0]]]["receipts"] = replacement
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(tampered))
        for result in _verifiers(path, pin):
            assert result.returncode == 1, (name, result.stdout, result.stderr)
            assert expected in result.stderr, (name, result.stderr)


# --- (e) a crash right after the local RESERVE ----------------------------------------------------


def test_an_agent_killed_after_its_local_reserve_and_restarted_neither_trains_again_nor_is_charged_for_what_it_never_sent(tmp_path):
    from accounting.selectors import dataset_epsilon_spent
    from federation.services.rounds import round_request

    fed = make_federation(tmp_path, rounds=1)
    slugs = list(fed.tokens)
    crashing = slugs[0]
    with local_stack(log_dir=tmp_path / "logs") as stack:
        crashed = stack.add(start_agent(
            {**stack.env, CRASH_AFTER_ENV: "local_reserve"}, stack.log_dir, name="agent-1", server=stack.server,
            token=fed.tokens[crashing], data=fed.partitions[0], state_dir=tmp_path / "agents" / crashing, poll_wait=2,
        ))
        for i, slug in enumerate(slugs[1:], start=1):
            stack.agent(name=f"agent-{i + 1}", token=fed.tokens[slug], data=fed.partitions[i], state_dir=tmp_path / "agents" / slug,
                        poll_wait=2)
        simulation.wait_for_agents(fed, timeout=60)
        rnd = round_request(actor=fed.admin, plan=fed.plan)
        deadline = time.monotonic() + 60
        while crashed.alive():
            assert time.monotonic() < deadline, stack.logs()[-8000:]
            time.sleep(0.05)
        assert crashed.popen.returncode == -9, crashed.tail()  # SIGKILL, by its own hand
        # The RESERVE was durable before the crash: the round is charged locally, nothing sent.
        local = _local(tmp_path, fed, crashing)
        assert (local["reserved"], local["committed"], local["released"]) == (1, 0, 0)
        charged = local["spent"]
        assert charged > 0
        assert f"round {rnd.pk}: sending" not in crashed.tail(100_000)
        restarted = stack.agent(name="agent-1-restarted", token=fed.tokens[crashing], data=fed.partitions[0],
                                state_dir=tmp_path / "agents" / crashing, poll_wait=2)
        rnd = _wait_round(fed, {"completed", "aborted", "failed"}, timeout=180, stack=stack, pk=rnd.pk)
        log = restarted.log.read_text()
    # The restarted agent found the round in its ledger and declined to run it a second time.
    assert f"round {rnd.pk}: REFUSED (round_already_run)" in log, log[-4000:]
    assert f"round {rnd.pk}: sending" not in log
    link = RoundParticipant.objects.get(round=rnd, dataset__organisation__slug=crashing)
    assert link.refusal_code == "round_already_run" and link.status == RoundParticipant.Status.DROPPED
    # The round ends cleanly without it.
    assert rnd.status == TrainingRound.Status.COMPLETED, rnd.reason
    assert sorted(rnd.metrics["contributors"]) == sorted(slugs[1:])
    # The lost process never committed the round, so its masked input never left (COMMIT is
    # written before it is sent): declining it, the restarted agent released it; no second RESERVE.
    local = _local(tmp_path, fed, crashing)
    assert (local["reserved"], local["committed"], local["released"]) == (0, 0, 1)
    assert local["spent"] == pytest.approx(0.0, abs=1e-12)
    kinds = [e["kind"] for e in local["entries"]]
    assert kinds.count("RESERVE") == 1 and kinds.count("RELEASE") == 1 and "COMMIT" not in kinds
    # The coordinator never received its masked input either: it RELEASED that dataset for
    # the round (ARCHITECTURE.md, Ledger 2), naming why, and charged the others. Both sides
    # hold the same charge, and the bundle verifies with the pinned key.
    from accounting.models import LedgerEntry

    release = LedgerEntry.objects.get(round=rnd, dataset__organisation__slug=crashing, kind="RELEASE")
    assert f"no masked input received from {crashing}: refused round_already_run" in release.payload
    assert not LedgerEntry.objects.filter(round=rnd, dataset__organisation__slug=crashing, kind="COMMIT").exists()
    for slug in slugs[1:]:
        assert LedgerEntry.objects.filter(round=rnd, dataset__organisation__slug=slug, kind="COMMIT").exists()
    assert dataset_epsilon_spent(dataset=fed.plan.datasets.get(organisation__slug=crashing)) == pytest.approx(0.0, abs=1e-12)
    assert_ledger_sound(fed)
    assert_bundle_verifies(tmp_path)
