"""Per-dataset settlement of a round that ended after its masked-input phase opened
(ARCHITECTURE.md, Ledger 2): a partner whose masked input the coordinator received is
charged with its ticket hash; one that never sent it (refused, dropped out) is released,
naming why, and the exported bundle still verifies against the pinned ledger key.

The round is driven through the services by in-process SecAggClients and the partners'
signed receipts (no Celery: phases are closed by calling the close service)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from accounting import audit, chain, heads
from accounting.errors import ReleaseRefused
from accounting.models import LedgerEntry
from accounting.services import budget as services
from federation import secagg
from federation.agent import runner, trust
from federation.agent.checks import PlanRefused, check_round
from federation.agent.config import AgentConfig
from federation.agent.work import RoundWork
from federation.models import RoundTicket, TrainingRound
from federation.services.agent_rounds import agent_receipt, agent_refuse, agent_rounds_taking_part, agent_submit, agent_tasks
from federation.services.agents import agent_terms
from federation.services.protocol import ADVERTISE, MASKED, SHARE, UNMASK
from federation.services.rounds import round_abort, round_aggregate, round_close_phase
from federation.services.settlement import round_budget_settle
from federation.services.tickets import round_ticket_hashes
from tests.accounting.receipting import run_cli

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_round(secagg_round):
    made = secagg_round(4, "rl")  # tests/federation/conftest.py
    return made.round, made.agents, made.keys, made.parts


def _relay(user):
    (task,) = agent_tasks(user=user)
    return base64.b64decode(task["payload"]["relay"])


def _close(round, phase):
    with transaction.atomic():
        return round_close_phase(round_id=round.pk, phase=phase, now=timezone.now() + timedelta(days=1))


def _receipt(round, slug, key):
    ticket = RoundTicket.objects.get(participant__round=round, participant__dataset__organisation__slug=slug)
    body = {
        "round": round.pk,
        "dataset": ticket.document["dataset"],
        "ticket_hash": ticket.ticket_hash,
        "event": ticket.document["event"],
        "local_ledger_head": "ab" * 32,
        "agent_public_key": key.public_key().public_bytes_raw().hex(),
    }
    return trust.receipt_sign(body, key)


def _drive_to_unmask(round, agents, keys, *, refuses=(), drops=()):
    """AdvertiseKeys .. MaskedInput closed: `refuses` decline at once, `drops` share keys
    and then never send their masked input. Returns the senders of a masked input."""
    slugs = sorted(agents)
    (task,) = agent_tasks(user=agents[slugs[0]])
    cfg = task["payload"]["config"]
    config = secagg.RoundConfig(cfg["round_id"], tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])
    identity = {p: bytes.fromhex(k) for p, k in task["payload"]["identity_keys"].items()}
    clients = {s: secagg.SecAggClient(config, party=s, signing_key=keys[s], identity_keys=identity) for s in slugs}
    for s in refuses:
        agent_refuse(user=agents[s], round_id=round.pk, code="ticket_mismatch", reason="z differs")
    taking_part = [s for s in slugs if s not in refuses]
    for s in taking_part:
        agent_submit(user=agents[s], round_id=round.pk, phase=ADVERTISE, body=clients[s].advertise_keys())
    assert _close(round, ADVERTISE) == f"opened {SHARE}"
    for s in taking_part:
        agent_submit(user=agents[s], round_id=round.pk, phase=SHARE, body=clients[s].share_keys(_relay(agents[s])))
    assert _close(round, SHARE) == f"opened {MASKED}"
    senders = [s for s in taking_part if s not in drops]
    rng = np.random.default_rng(5)
    for s in senders:
        body = clients[s].masked_input(_relay(agents[s]), rng.integers(0, 2**10, config.vector_length, dtype=np.uint32))
        agent_submit(user=agents[s], round_id=round.pk, phase=MASKED, body=body)
        # the agent signs its receipt before the masked input leaves and sends it after
        agent_receipt(user=agents[s], round_id=round.pk, body=json.dumps(_receipt(round, s, keys[s])).encode())
    assert _close(round, MASKED) == f"opened {UNMASK}"
    return clients, senders


def _kinds(round, slug):
    return [e.kind for e in LedgerEntry.objects.filter(round=round, dataset__organisation__slug=slug).order_by("seq")]


def _bundle_verifies(tmp_path):
    path = tmp_path / "bundle.json"
    call_command("export_ledger", out=str(path), sign_pending=True)
    call_command("verify_ledger", bundle=str(path), public_key=heads.public_key_hex())
    result = run_cli(str(path), "--public-key", heads.public_key_hex())
    assert result.returncode == 0, result.stdout + result.stderr
    # The senders' signed tickets went in, checked against the terms the parties signed.
    data = json.loads(path.read_text())
    assert data["agreements"] and all(c["tickets"] for c in data["chains"] if any(e["kind"] == chain.COMMIT for e in c["entries"]))
    assert "tickets checked against their signed terms" in result.stdout and "no tickets in bundle" not in result.stderr


@pytest.mark.parametrize("case", ["refused", "dropped"])
def test_a_completed_round_charges_its_contributors_and_releases_who_sent_no_masked_input(running_round, tmp_path, case):
    round, agents, keys, parts = running_round
    slugs = sorted(agents)
    out = slugs[1]
    clients, senders = _drive_to_unmask(round, agents, keys, **({"refuses": [out]} if case == "refused" else {"drops": [out]}))
    for s in senders:
        agent_submit(user=agents[s], round_id=round.pk, phase=UNMASK, body=clients[s].unmask(_relay(agents[s])))
    assert _close(round, UNMASK) == "aggregating"
    result = round_aggregate(round_id=round.pk)
    if result == "evaluating":
        assert _close(round, "evaluate") == "completed"
    round.refresh_from_db()
    assert round.status == TrainingRound.Status.COMPLETED
    assert sorted(round.metrics["contributors"]) == senders

    hashes = round_ticket_hashes(round)
    for s in senders:
        assert _kinds(round, s) == [chain.RESERVE, chain.COMMIT]
        commit = LedgerEntry.objects.get(round=round, dataset__organisation__slug=s, kind=chain.COMMIT)
        assert json.loads(commit.payload)["ticket_hash"] == hashes[commit.dataset_id]
    assert _kinds(round, out) == [chain.RESERVE, chain.RELEASE]
    release = LedgerEntry.objects.get(round=round, dataset__organisation__slug=out, kind=chain.RELEASE)
    why = "refused ticket_mismatch" if case == "refused" else "dropped out before sending it"
    payload = json.loads(release.payload)
    assert payload["reason"] == f"no masked input received from {out}: {why}"
    assert payload["no_update_released"] is True and payload["round_status"] == "completed"
    assert all(r.ok for r in audit.verify_all())
    _bundle_verifies(tmp_path)


def test_an_abort_after_the_masked_input_charges_the_senders_only_and_twice_writes_nothing(running_round, tmp_path):
    round, agents, keys, parts = running_round
    slugs = sorted(agents)
    _, senders = _drive_to_unmask(round, agents, keys, drops=[slugs[0]])
    with transaction.atomic():
        round_abort(actor=None, round=round, reason="operator stop")
    count = LedgerEntry.objects.count()
    with transaction.atomic():
        round_abort(actor=None, round=round, reason="operator stop")  # a second delivery
    with transaction.atomic():
        round_budget_settle(round=round)  # every reservation is final already
    assert LedgerEntry.objects.count() == count
    for s in senders:
        assert _kinds(round, s) == [chain.RESERVE, chain.COMMIT]
    assert _kinds(round, slugs[0]) == [chain.RESERVE, chain.RELEASE]
    _bundle_verifies(tmp_path)


def test_an_abort_before_the_masked_input_still_releases_the_whole_round(running_round):
    round, agents, keys, parts = running_round
    with transaction.atomic():
        round_abort(actor=None, round=round, reason="stopped in advertise")
    assert set(LedgerEntry.objects.filter(round=round).values_list("kind", flat=True)) == {chain.RESERVE, chain.RELEASE}


def test_a_dataset_whose_masked_input_was_received_cannot_be_released(running_round):
    round, agents, keys, parts = running_round
    slugs = sorted(agents)
    _, senders = _drive_to_unmask(round, agents, keys, drops=[slugs[0]])
    by_slug = dict(LedgerEntry.objects.filter(round=round, kind=chain.RESERVE).values_list("dataset__organisation__slug", "dataset_id"))
    # live round: refused whatever the dataset
    with pytest.raises(ReleaseRefused):
        services.budget_release_datasets(round=round, actor=None, reasons={by_slug[slugs[0]]: "x"}, no_update_released=True)
    TrainingRound.objects.filter(pk=round.pk).update(status=TrainingRound.Status.FAILED)
    before = LedgerEntry.objects.count()
    with pytest.raises(ReleaseRefused) as info:
        services.budget_release_datasets(round=round, actor=None, reasons={by_slug[senders[0]]: "no input"}, no_update_released=True)
    assert "received the masked input" in str(info.value)
    with pytest.raises(ReleaseRefused):
        services.budget_release_datasets(round=round, actor=None, reasons={by_slug[slugs[0]]: "dropped"}, no_update_released=False)
    with pytest.raises(ReleaseRefused):
        services.budget_release_datasets(round=round, actor=None, reasons={by_slug[slugs[0]]: "  "}, no_update_released=True)
    assert LedgerEntry.objects.count() == before
    (entry,) = services.budget_release_datasets(round=round, actor=None, reasons={by_slug[slugs[0]]: "dropped"}, no_update_released=True)
    assert entry.kind == chain.RELEASE and entry.dataset_id == by_slug[slugs[0]]
    assert services.budget_release_datasets(round=round, actor=None, reasons={by_slug[slugs[0]]: "dropped"}, no_update_released=True) == []


# --- the partner's side (federation/agent/runner.py, docs/PARTNER-LEDGER.md) ----------------------


def _agent_reserving(user, state_dir, data):
    """A real runner Agent with its partner ledger, reserving the round of `user`'s task."""
    (task,) = agent_tasks(user=user)
    org = user.memberships.get(role="agent").organisation
    ticket, ticket_hash = check_round(
        task["round"], task["payload"], coordinator_key=heads.public_key_hex(), terms=agent_terms(org), organisation=org.slug
    )
    agent = runner.Agent(AgentConfig(server="http://127.0.0.1:9", token="t", data=data, state_dir=state_dir, budget=8.0, delta=1e-5))
    agent.coordinator_key = heads.public_key_hex()
    return agent, task, ticket, ticket_hash


def test_an_agent_restarted_after_its_local_reserve_declines_and_releases_what_it_never_sent(running_round, tmp_path):
    round, agents, keys, parts = running_round
    slug = sorted(agents)[0]
    agent, task, ticket, ticket_hash = _agent_reserving(agents[slug], tmp_path / "a", parts[0])
    key = agent._local_reserve(task["round"], ticket, ticket_hash)
    assert agent.local_ledger.reservation_for(key).state == "reserved"
    agent.local_ledger.close()  # the process dies here; a new one opens the same state directory
    again, *_ = _agent_reserving(agents[slug], tmp_path / "a", parts[0])
    with pytest.raises(PlanRefused) as info:
        again._local_reserve(task["round"], ticket, ticket_hash)
    assert info.value.code == "round_already_run"
    assert again.local_ledger.reservation_for(key).state == "released"
    assert again.local_ledger.spent(again.data_id) == 0.0
    with pytest.raises(PlanRefused):  # and it is still never run twice
        again._local_reserve(task["round"], ticket, ticket_hash)
    again.local_ledger.close()


def test_an_agent_releases_a_round_that_ended_before_its_masked_input_and_keeps_a_committed_one(running_round, tmp_path):
    round, agents, keys, parts = running_round
    slugs = sorted(agents)
    works = {}
    for i, slug in enumerate(slugs[:2]):
        agent, task, ticket, ticket_hash = _agent_reserving(agents[slug], tmp_path / slug, parts[i])
        key = agent._local_reserve(task["round"], ticket, ticket_hash)
        agent.work[round.pk] = RoundWork(round.pk, None, None, local_key=key)
        works[slug] = (agent, key)
    committed_agent, committed_key = works[slugs[1]]
    committed_agent._local_commit(committed_agent.work[round.pk])
    # While the round may still ask something of them, nothing is released.
    for slug, (agent, _key) in works.items():
        live = agent_rounds_taking_part(user=agents[slug])
        assert live == [round.pk]
        agent.settle_ended_rounds(live, [])
        assert round.pk in agent.work
    # The coordinator aborts the round (e.g. in ShareKeys, another partner dropped).
    with transaction.atomic():
        round_abort(actor=None, round=round, reason="another partner dropped in share_keys")
    for slug, (agent, _key) in works.items():
        live = agent_rounds_taking_part(user=agents[slug])
        assert live == []
        agent.settle_ended_rounds(live, [])
    agent, key = works[slugs[0]]
    assert agent.local_ledger.reservation_for(key).state == "released" and round.pk not in agent.work
    assert agent.local_ledger.spent(agent.data_id) == 0.0
    # Committed: its masked input may have left, it is never released.
    assert committed_agent.local_ledger.reservation_for(committed_key).state == "committed"
    # A coordinator that does not list its rounds leaves the work alone.
    for agent, _ in works.values():
        agent.settle_ended_rounds(None, [])
        agent.local_ledger.close()
