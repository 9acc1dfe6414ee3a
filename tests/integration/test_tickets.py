"""Round tickets through the real stack (Redis, Celery, gunicorn, partner agents over HTTP):
the agents run what the ledger reserved, or decline, and say why."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from federation.models import RoundParticipant, RoundTicket, TrainingPlan, TrainingRound
from harness import simulation
from harness.localstack import local_stack, stop
from tests.tamper import force_update

from .test_rounds import assert_ledger_sound, make_federation, start_agents

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("stack")]


def _wait_round(fed, statuses, timeout=120, stack=None, **filters):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rnd = TrainingRound.objects.filter(plan=fed.plan, **filters).first()
        if rnd is not None and rnd.status in statuses:
            return rnd
        time.sleep(0.1)
    raise AssertionError(f"round not {statuses}: {TrainingRound.objects.filter(plan=fed.plan).values('status', 'phase', 'reason')}\n"
                         + (stack.logs()[-8000:] if stack else ""))


def _admin_client(fed) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(pk=fed.admin.pk))
    return client


def test_a_plan_changed_after_reservation_is_refused_by_every_agent_and_nobody_trains(tmp_path):
    from federation.services.rounds import round_request

    fed = make_federation(tmp_path, rounds=1)
    with local_stack(log_dir=tmp_path / "logs") as stack:
        start_agents(stack, fed, tmp_path)  # enrol (and pin the coordinator's key)...
        for name in [n for n in stack.procs if n.startswith("agent-")]:
            stop(stack.procs[name].popen)  # ...then go away while the round starts
        rnd = round_request(actor=fed.admin, plan=fed.plan)
        rnd = _wait_round(fed, {"running"}, stack=stack, pk=rnd.pk, phase="advertise_keys")
        # Budget reserved and tickets signed for z, K. Now the plan is changed behind the
        # ledger's back, as a compromised database would: the model guard and the trigger
        # lifted (tests/tamper.py), which the guards' own tests show they otherwise refuse.
        plan = TrainingPlan.objects.get(pk=fed.plan.pk)
        force_update(TrainingPlan, plan.pk, noise_multiplier=plan.noise_multiplier / 4, local_steps=plan.local_steps * 50)
        for i, (slug, token) in enumerate(fed.tokens.items()):
            stack.agent(name=f"again-{i + 1}", token=token, data=fed.partitions[i], state_dir=tmp_path / "agents" / slug, poll_wait=2)
        rnd = _wait_round(fed, {"aborted", "failed", "completed"}, stack=stack, pk=rnd.pk)
        logs = {name: proc.log.read_text() for name, proc in stack.procs.items() if name.startswith("again-")}
    assert rnd.status == TrainingRound.Status.ABORTED, rnd.reason
    links = list(RoundParticipant.objects.filter(round=rnd).select_related("dataset__organisation"))
    assert len(links) == 3
    for link in links:
        assert link.refusal_code == "ticket_mismatch", (link.refusal_code, link.refusal_reason)
        assert "z:" in link.refusal_reason and "K:" in link.refusal_reason
        assert f"{link.dataset.organisation.slug} declined (ticket_mismatch:" in rnd.reason
    for log in logs.values():  # no partner trained, nothing was sent
        assert "REFUSED (ticket_mismatch)" in log
        assert "sending advertise_keys" not in log
    client = _admin_client(fed)
    api = client.get(f"/api/v1/rounds/{rnd.pk}/participants/").json()["results"]
    assert {p["refusal_code"] for p in api} == {"ticket_mismatch"}
    assert "declined (ticket_mismatch" in client.get(f"/api/v1/rounds/{rnd.pk}/").json()["reason"]
    page = client.get(f"/rounds/{rnd.pk}/").content.decode()
    assert page.count("ticket_mismatch") >= 3
    # Nothing left the partners: the reservation was released, and the ledger agrees.
    from accounting.models import LedgerEntry

    assert sorted(LedgerEntry.objects.filter(round=rnd).values_list("kind", flat=True)) == ["RELEASE"] * 3 + ["RESERVE"] * 3
    assert_ledger_sound(fed)
    assert_bundle_verifies(tmp_path)


def assert_bundle_verifies(tmp_path):
    """The ledger and the partners' receipts agree: the exported bundle passes the auditor's
    verifier against the pinned coordinator key."""
    from accounting import heads

    path = tmp_path / "bundle.json"
    call_command("export_ledger", out=str(path), sign_pending=True)
    call_command("verify_ledger", bundle=str(path), public_key=heads.public_key_hex())


def test_an_agent_pinning_another_coordinator_key_refuses_every_ticket_and_the_others_complete_with_receipts(tmp_path):
    from federation.services.rounds import round_request

    fed = make_federation(tmp_path, rounds=1)
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    with local_stack(log_dir=tmp_path / "logs") as stack:
        for i, (slug, token) in enumerate(fed.tokens.items()):
            stack.agent(
                name=f"agent-{i + 1}", token=token, data=fed.partitions[i], state_dir=tmp_path / "agents" / slug, poll_wait=2,
                coordinator_key=other if i == 0 else None,
            )
        simulation.wait_for_agents(fed, timeout=60)
        rnd = round_request(actor=fed.admin, plan=fed.plan)
        rnd = _wait_round(fed, {"completed", "aborted", "failed"}, timeout=180, stack=stack, pk=rnd.pk)
        log = stack.procs["agent-1"].log.read_text()
    assert rnd.status == TrainingRound.Status.COMPLETED, rnd.reason
    refused_slug = list(fed.tokens)[0]
    link = RoundParticipant.objects.get(round=rnd, dataset__organisation__slug=refused_slug)
    assert link.refusal_code == "ticket_signature" and link.status == RoundParticipant.Status.DROPPED
    assert "REFUSED the coordinator's ledger key" in log and "sending advertise_keys" not in log
    assert sorted(rnd.metrics["contributors"]) == sorted(list(fed.tokens)[1:])
    # The two that ran sent signed receipts; nothing is flagged.
    receipts = RoundTicket.objects.filter(participant__round=rnd, receipt__isnull=False)
    assert sorted(receipts.values_list("participant__dataset__organisation__slug", flat=True)) == sorted(list(fed.tokens)[1:])
    assert rnd.metrics["receipts_missing"] == []
    # The partner that refused sent no masked input: its reservation is released, naming
    # why; the two that ran are charged with their ticket hashes (ARCHITECTURE.md, Ledger 2).
    from accounting.models import LedgerEntry

    kinds = {
        slug: sorted(LedgerEntry.objects.filter(round=rnd, dataset__organisation__slug=slug).values_list("kind", flat=True))
        for slug in fed.tokens
    }
    assert kinds == {slug: ["RELEASE" if slug == refused_slug else "COMMIT", "RESERVE"] for slug in fed.tokens}
    release = LedgerEntry.objects.get(round=rnd, dataset__organisation__slug=refused_slug, kind="RELEASE")
    assert f"no masked input received from {refused_slug}: refused ticket_signature" in release.payload
    assert_ledger_sound(fed)
    assert_bundle_verifies(tmp_path)
