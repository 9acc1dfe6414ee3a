"""The whole path through real processes: a round requested under an every-party agreement
notifies each representative whose approval it needs (inbox over the API with their own
token, an email through a real SMTP server, a signed POST to their organisation's webhook),
delivered by a real Celery worker through a real Redis; a worker SIGKILLed mid-delivery
sends nothing twice."""

from __future__ import annotations

import json

import pytest
import requests

from federation.models import ApiToken, TrainingRound
from federation.services.rounds import round_request
from federation.services.tokens import token_issue
from harness.localstack import kill_hard, local_stack, start_worker
from notifications.models import Delivery, Kind
from notifications.services import webhook_create
from tests.factories import build_cast

from .conftest import start_receiver, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("stack")]


def test_a_requested_round_reaches_every_approver_once_even_when_a_worker_dies_mid_delivery(tmp_path, smtp_sink):
    cast = build_cast()
    reps = {"org-a": cast.rep_a, "org-b": cast.rep_b, "org-c": cast.rep_c}
    for rep in reps.values():
        rep.email = f"{rep.username}@example.org"
        rep.save(update_fields=["email"])
    stall = tmp_path / "release-the-first-request"
    secrets_file = tmp_path / "secrets.json"
    receiver = start_receiver(tmp_path, f"@{secrets_file}", stall_file=stall)
    hooks = {
        org.slug: webhook_create(actor=cast.admin, organisation=org, url=f"http://127.0.0.1:{receiver.port}/{org.slug}")
        for org in (cast.org_a, cast.org_b, cast.org_c)
    }
    secrets_file.write_text(json.dumps({f"/{slug}": hook.secret for slug, hook in hooks.items()}))
    tokens = {slug: token_issue(actor=rep, user=rep, scopes=[ApiToken.Scope.READ])[1] for slug, rep in reps.items()}
    env = {
        "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp_sink.port), "EMAIL_TIMEOUT": "3",
        "FEDGOV_WEBHOOK_CONNECT_TIMEOUT": "2", "FEDGOV_WEBHOOK_TIMEOUT": "5", "FEDGOV_NOTIFY_LEASE_SECONDS": "10",
        "FEDGOV_NOTIFY_SWEEP_SECONDS": "2", "FEDGOV_NOTIFY_SWEEP_GRACE_SECONDS": "2",
    }
    try:
        with local_stack(log_dir=tmp_path / "logs", workers=0, extra_env=env) as stack:
            worker = start_worker(stack.env, stack.log_dir, name="first", queues="fedgov.default", concurrency=1, supervise=False)
            round = round_request(actor=cast.admin, plan=cast.plan)
            assert round.status == TrainingRound.Status.AWAITING_APPROVAL
            # The first webhook call is held by the receiver: the worker is inside the send.
            wait_until(lambda: any(r["outcome"] == "stalled" for r in receiver.records()), timeout=60)
            kill_hard(worker.popen)
            stall.touch()
            stack.add(start_worker(stack.env, stack.log_dir, name="second", queues="fedgov.default", concurrency=1, supervise=False))
            try:
                wait_until(lambda: Delivery.objects.filter(status=Delivery.Status.DELIVERED).count() == 6, timeout=120)
            except TimeoutError:
                print(list(Delivery.objects.values("channel", "target", "status", "attempts", "last_error")))
                print(stack.logs()[-6000:])
                raise

            for slug in reps:
                answer = requests.get(f"{stack.server}/api/v1/notifications/?unread=true",
                                      headers={"Authorization": f"Token {tokens[slug]}"}, timeout=10)
                assert answer.status_code == 200, answer.text
                [item] = answer.json()["results"]  # their own, and only theirs
                assert item["kind"] == Kind.APPROVAL_WAITING and item["read"] is False
                assert item["link"] == f"/rounds/{round.pk}/"
    finally:
        receiver.proc.kill()

    mail = smtp_sink.records()
    assert sorted(m["to"][0] for m in mail) == ["rep-a@example.org", "rep-b@example.org", "rep-c@example.org"]
    assert len({m["message_id"] for m in mail}) == 3  # one email each, none twice

    calls = receiver.records()
    accepted = [c for c in calls if c["outcome"] == "accepted"]
    assert sorted(c["path"] for c in accepted) == ["/org-a", "/org-b", "/org-c"]
    assert all(c["signature_ok"] for c in calls)
    assert not [c for c in calls if c["outcome"] == "duplicate"]
    [stalled] = [c for c in calls if c["outcome"] == "stalled"]
    # The interrupted call was sent again once, with the same delivery id, and accepted.
    assert [c["outcome"] for c in calls if c["delivery"] == stalled["delivery"]] == ["stalled", "accepted"]
    interrupted = Delivery.objects.get(idempotency_key=stalled["delivery"])
    log = list(interrupted.log.values_list("number", "ok"))
    assert log == [(1, False), (2, True)]
    assert "lease expired" in interrupted.log.get(number=1).error
