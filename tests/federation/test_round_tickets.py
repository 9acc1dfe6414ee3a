"""Round tickets, the agent's checks before it touches its data, refusals and receipts.

The coordinator side runs through the services on a real round (budget reserved, protocol
open); the agent's checks are `federation.agent.runner.check_round` / `check_evaluation`
applied to the task payload the coordinator really serves."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.db import transaction

from accounting import audit, heads
from accounting.dp_events import canonical_json, dataset_round_event
from accounting.models import LedgerEntry
from federation import learning
from federation.agent import runner, trust
from federation.agent.checks import PlanRefused, check_evaluation, check_round
from federation.agent.config import AgentConfig
from federation.agent.work import RoundWork
from federation.models import ImmutableRow, RoundParticipant, RoundTicket, TrainingRound
from federation.services.agent_rounds import ReceiptConflict, ReceiptRejected, agent_receipt, agent_refuse, agent_tasks
from federation.services.agents import agent_terms
from federation.services.protocol import ADVERTISE
from federation.services.rounds import round_close_phase
from federation.services.tickets import receipts_missing, ticket_signed

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_round(secagg_round):
    made = secagg_round(3, "tk")  # tests/federation/conftest.py
    return made.round, made.agents, made.keys, made.parts


def _task(user):
    (task,) = agent_tasks(user=user)
    return task


def _check(task, user, *, key=None):
    org = user.memberships.get(role="agent").organisation
    return check_round(
        task["round"], task["payload"], coordinator_key=key or heads.public_key_hex(),
        terms=agent_terms(org), organisation=org.slug,
    )


def _resign(task, **changes):
    """A ticket the coordinator's own ledger key signed with other values (a coordinator that
    misbehaves, or is compromised): the task shows the same values, so only the agent's own
    privacy checks stand in the way."""
    payload = task["payload"]
    ticket = {k: v for k, v in payload["ticket"].items() if k != "signature"}
    ticket.update(changes)
    ticket["event"] = json.loads(canonical_json(dataset_round_event({
        "q": ticket["q"], "z": ticket["z"], "K": ticket["K"],
        "eval_noise_multiplier": ticket["eval_noise"], "eval_count": ticket["eval_count"],
    })))
    payload["ticket"] = trust.ticket_sign(ticket, heads.signing_key())
    dp = payload["plan"]["dp"]
    dp.update(q=ticket["q"], z=ticket["z"], K=ticket["K"], eval_noise_multiplier=ticket["eval_noise"], eval_count=ticket["eval_count"])
    return task


# --- the coordinator issues tickets ------------------------------------------------------------


def test_every_participant_gets_a_ticket_signed_with_the_ledger_key_naming_its_reserve(running_round):
    round, agents, _, _ = running_round
    tickets = RoundTicket.objects.filter(participant__round=round).select_related("participant__dataset")
    assert tickets.count() == 3
    reserves = {e.dataset_id: e for e in LedgerEntry.objects.filter(round=round, kind="RESERVE")}
    for ticket in tickets:
        doc = ticket_signed(ticket)
        assert trust.ticket_verify(doc, heads.public_key_raw()) == ticket.ticket_hash
        reserve = reserves[ticket.participant.dataset_id]
        assert doc["reserve_entry_hash"] == reserve.entry_hash
        assert canonical_json(doc["event"]) == reserve.event
        assert (doc["round"], doc["dataset"], doc["records"]) == (round.pk, reserve.dataset_slug, ticket.participant.dataset.record_count)
        plan = round.plan
        assert (doc["z"], doc["K"], doc["C"], doc["eval_noise"]) == (plan.noise_multiplier, plan.local_steps, plan.clip_norm, plan.eval_noise_multiplier)
        assert doc["terms_hash"] == plan.agreement.terms_hash
    for user in agents.values():
        task = _task(user)
        ticket, _ = _check(task, user)  # what the coordinator serves passes the agent's checks
        assert ticket == task["payload"]["ticket"]


def test_a_ticket_is_written_once(running_round):
    round = running_round[0]
    ticket = RoundTicket.objects.filter(participant__round=round).first()
    ticket.document = {**ticket.document, "z": 0.01}
    with pytest.raises(ImmutableRow):
        ticket.save()
    with pytest.raises(ImmutableRow):
        ticket.save(update_fields=["document"])


# --- the agent's checks (issue #13 item 6) ------------------------------------------------------


def test_the_agent_refuses_a_round_whose_epsilon_is_above_the_ceiling_it_was_shown(running_round):
    _, agents, _, _ = running_round
    user = next(iter(agents.values()))
    task = _resign(_task(user), q=1.0, z=0.8, K=10**6)  # the plan the old agent ran
    with pytest.raises(PlanRefused) as info:
        _check(task, user)
    assert info.value.code == "epsilon_over_ceiling" and "per-round ceiling" in str(info.value)


def test_the_agent_refuses_evaluation_noise_below_the_floor(running_round):
    _, agents, _, _ = running_round
    user = next(iter(agents.values()))
    task = _resign(_task(user), eval_noise=1e-9)  # would release the true counts
    with pytest.raises(PlanRefused) as info:
        _check(task, user)
    assert info.value.code == "eval_noise_too_low"


def test_the_agent_refuses_evaluation_noise_other_than_its_ticket(running_round):
    _, agents, _, _ = running_round
    user = next(iter(agents.values()))
    task = _task(user)
    ticket, ticket_hash = _check(task, user)
    work = RoundWork(task["round"], None, None, ticket=ticket, ticket_hash=ticket_hash, dataset=task["payload"]["dataset"]["slug"])
    with pytest.raises(PlanRefused) as info:
        check_evaluation({"eval_noise_multiplier": 1e-9, "dataset": work.dataset}, work)
    assert info.value.code == "ticket_mismatch"
    with pytest.raises(PlanRefused) as info:
        check_evaluation({"eval_noise_multiplier": ticket["eval_noise"], "dataset": "someone-elses"}, work)
    assert info.value.code == "ticket_mismatch" and "someone-elses" in str(info.value)
    assert check_evaluation({"eval_noise_multiplier": ticket["eval_noise"], "dataset": work.dataset}, work) == ticket["eval_noise"]


def test_the_agent_refuses_a_ticket_that_the_task_contradicts(running_round):
    _, agents, _, _ = running_round
    user = next(iter(agents.values()))
    task = _task(user)
    task["payload"]["plan"]["dp"]["z"] = 0.01
    with pytest.raises(PlanRefused) as info:
        _check(task, user)
    assert info.value.code == "ticket_mismatch" and "z:" in str(info.value)


def test_the_agent_refuses_unsigned_and_foreign_tickets(running_round):
    _, agents, _, _ = running_round
    user = next(iter(agents.values()))
    task = _task(user)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(PlanRefused) as info:
        _check(task, user, key=other.public_key().public_bytes_raw().hex())
    assert info.value.code == "ticket_signature"
    forged = dict(task["payload"]["ticket"], key_id=trust.key_id(other.public_key().public_bytes_raw()))
    forged = trust.ticket_sign(forged, other)
    with pytest.raises(PlanRefused) as info:
        _check({**task, "payload": {**task["payload"], "ticket": forged}}, user)
    assert info.value.code == "ticket_signature"
    unsigned = {k: v for k, v in task["payload"]["ticket"].items() if k != "signature"}
    for ticket in (None, unsigned):
        with pytest.raises(PlanRefused) as info:
            _check({**task, "payload": {**task["payload"], "ticket": ticket}}, user)
        assert info.value.code == "ticket_unsigned"


def test_the_agent_refuses_terms_it_does_not_hold(running_round):
    _, agents, _, _ = running_round
    user = next(iter(agents.values()))
    task = _resign(_task(user), terms_hash="0" * 64)
    with pytest.raises(PlanRefused) as info:
        _check(task, user)
    assert info.value.code == "terms_mismatch"


class _Recorder(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"accepted": true}')

    def log_message(self, *args):
        pass


def test_the_agent_evaluates_on_the_rounds_own_dataset(running_round, tmp_path):
    """Two datasets cached (another plan's first, 5000 records): the evaluation counts come from the split
    of the dataset the round trained on, not from whichever was loaded first."""
    round, agents, _, parts = running_round
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        agent = runner.Agent(AgentConfig(server=f"http://127.0.0.1:{server.server_port}", token="t", data=parts[0], state_dir=tmp_path / "a"))
        rng = np.random.default_rng(0)
        agent._data_cache["another-plan"] = (None, None, rng.random((5000, 4)), np.zeros(5000, dtype=np.int64))
        user = next(iter(agents.values()))
        task = _task(user)
        ticket, ticket_hash = _check(task, user)
        key = agent._data_key(task["payload"]["dataset"]["schema"])
        assert next(iter(agent._data_cache)) == "another-plan"
        work = RoundWork(
            task["round"], None, None, spec=ticket["model_spec"], ticket=ticket, ticket_hash=ticket_hash,
            dataset=task["payload"]["dataset"]["slug"], data_key=key,
        )
        agent.work[task["round"]] = work
        params = learning.init_params(ticket["model_spec"], seed=1)
        model = {"sha256": __import__("hashlib").sha256(params.tobytes()).hexdigest(),
                 "params": __import__("base64").b64encode(params.tobytes()).decode()}
        agent._evaluate(task["round"], {"eval_noise_multiplier": ticket["eval_noise"], "dataset": work.dataset, "model": model})
    finally:
        server.shutdown()
    (path, body), = _Recorder.bodies
    assert path.endswith(f"/rounds/{task['round']}/evaluate/")
    release = json.loads(body)
    own_eval = len(agent._data_cache[key][3])
    # Noise sigma=10: the noisy total is within 6 sigma of the true one, far from the other split's 5000.
    assert abs(release["noisy_total"] - own_eval) < 60 and own_eval < 1000


# --- refusals -----------------------------------------------------------------------------------


def test_a_refusal_is_stored_with_its_code_and_reason_and_the_round_closes_when_all_declined(running_round, django_capture_on_commit_callbacks):
    round, agents, _, _ = running_round
    for slug, user in agents.items():
        with django_capture_on_commit_callbacks(execute=False):
            out = agent_refuse(user=user, round_id=round.pk, code="ticket_mismatch", reason=f"z differs for {slug}")
        assert out["code"] == "ticket_mismatch"
    links = RoundParticipant.objects.filter(round=round)
    assert {(p.refusal_code, p.status) for p in links} == {("ticket_mismatch", "dropped")}
    with transaction.atomic():
        assert round_close_phase(round_id=round.pk, phase=ADVERTISE) == "aborted"
    round.refresh_from_db()
    assert round.status == TrainingRound.Status.ABORTED
    assert "declined (ticket_mismatch: z differs for" in round.reason
    assert set(round.metrics["refusals"]) == set(agents)
    # Nothing left the partners: the reservation is released, and the ledger verifies.
    assert set(LedgerEntry.objects.filter(round=round).values_list("kind", flat=True)) == {"RESERVE", "RELEASE"}
    assert all(r.ok for r in audit.verify_all())


@pytest.mark.parametrize("code", ["", "has space", "x" * 65, "ünicode"])
def test_a_refusal_needs_a_stable_code(running_round, code):
    from fedgov.errors import ValidationFailed

    round, agents, _, _ = running_round
    with pytest.raises(ValidationFailed):
        agent_refuse(user=next(iter(agents.values())), round_id=round.pk, code=code, reason="why")
    assert not RoundParticipant.objects.filter(round=round).exclude(refusal_code="").exists()


def test_the_round_api_and_page_say_why_a_partner_declined(running_round, client):
    round, agents, _, _ = running_round
    slug, user = next(iter(agents.items()))
    agent_refuse(user=user, round_id=round.pk, code="ticket_signature", reason="signed by another key")
    admin = get_user_model().objects.get(username="tk-admin")
    client.force_login(admin)
    page = client.get(f"/rounds/{round.pk}/")
    assert page.status_code == 200
    assert b"ticket_signature" in page.content and b"signed by another key" in page.content
    api = client.get(f"/api/v1/rounds/{round.pk}/participants/").json()
    rows = {p["organisation_slug"]: p for p in api["results"]}
    assert rows[slug]["refusal_code"] == "ticket_signature" and rows[slug]["refusal_reason"] == "signed by another key"


# --- receipts -----------------------------------------------------------------------------------


def _receipt(rnd, slug, key, **changes):
    ticket = RoundTicket.objects.get(participant__round=rnd, participant__dataset__organisation__slug=slug)
    body = {
        "round": rnd.pk,
        "dataset": ticket.document["dataset"],
        "ticket_hash": ticket.ticket_hash,
        "event": ticket.document["event"],
        "local_ledger_head": "ab" * 32,
        "agent_public_key": key.public_key().public_bytes_raw().hex(),
        **changes,
    }
    return trust.receipt_sign(body, key)


def test_a_receipt_is_checked_and_stored_once(running_round):
    round, agents, keys, _ = running_round
    slug = sorted(agents)[0]
    receipt = _receipt(round, slug, keys[slug])
    assert agent_receipt(user=agents[slug], round_id=round.pk, body=json.dumps(receipt).encode()) == {"accepted": True}
    # the same again (a retried POST): fine; another one: a conflict
    assert agent_receipt(user=agents[slug], round_id=round.pk, body=json.dumps(receipt).encode()) == {"accepted": True}
    with pytest.raises(ReceiptConflict):
        agent_receipt(user=agents[slug], round_id=round.pk, body=json.dumps(_receipt(round, slug, keys[slug], local_ledger_head="cd" * 32)).encode())
    stored = RoundTicket.objects.get(participant__round=round, participant__dataset__organisation__slug=slug)
    assert stored.receipt == receipt


@pytest.mark.parametrize(
    "tamper,code",
    [
        (lambda r, s, k, a: _receipt(r, s, Ed25519PrivateKey.generate()), "receipt_signature"),  # not the enrolled key
        (lambda r, s, k, a: {**_receipt(r, s, k), "signature": "00" * 64}, "receipt_signature"),
        (lambda r, s, k, a: _receipt(r, s, k, ticket_hash="0" * 64), "receipt_mismatch"),
        (lambda r, s, k, a: _receipt(r, s, k, event={"kind": "Gaussian"}), "receipt_mismatch"),
        (lambda r, s, k, a: _receipt(r, s, k, round=r.pk + 1000), "receipt_mismatch"),
        (lambda r, s, k, a: {k2: v for k2, v in _receipt(r, s, k).items() if k2 != "local_ledger_head"}, "receipt_malformed"),
    ],
)
def test_a_bad_receipt_is_refused_and_nothing_is_stored(running_round, tamper, code):
    round, agents, keys, _ = running_round
    slug = sorted(agents)[0]
    with pytest.raises(ReceiptRejected) as info:
        agent_receipt(user=agents[slug], round_id=round.pk, body=json.dumps(tamper(round, slug, keys[slug], agents)).encode())
    assert info.value.details["receipt_code"] == code
    assert not RoundTicket.objects.filter(participant__round=round, receipt__isnull=False).exists()


def test_a_round_whose_receipts_never_came_is_flagged(running_round):
    round, agents, keys, _ = running_round
    slugs = sorted(agents)
    round.metrics = {**round.metrics, "contributors": slugs}
    round.save(update_fields=["metrics"])
    agent_receipt(user=agents[slugs[0]], round_id=round.pk, body=json.dumps(_receipt(round, slugs[0], keys[slugs[0]])).encode())
    assert receipts_missing(round) == slugs[1:]


def test_the_agent_refuses_a_round_its_own_ledger_cannot_pay_for(running_round, tmp_path):
    """The partner's ledger (docs/PARTNER-LEDGER.md) is checked before training: over the
    operator's local budget, the round is declined with `local_budget_exceeded`."""
    pytest.importorskip("federation.agent.ledger")
    _, agents, _, parts = running_round
    user = next(iter(agents.values()))
    task = _task(user)
    ticket, ticket_hash = _check(task, user)
    agent = runner.Agent(AgentConfig(server="http://127.0.0.1:9", token="t", data=parts[0], state_dir=tmp_path / "a", budget=0.5, delta=1e-5))
    with pytest.raises(PlanRefused) as info:
        agent._local_reserve(task["round"], ticket, ticket_hash)
    assert info.value.code == "local_budget_exceeded"
    assert agent.local_ledger.spent(agent.data_id) == 0.0
    agent.local_ledger.close()
