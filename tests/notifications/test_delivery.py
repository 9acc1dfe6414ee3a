"""Delivery of the outbox to a real SMTP server (aiosmtpd) and a real HTTP receiver, both
separate processes on loopback: claim-once, signatures, retries with backoff, the log."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from federation.services.rounds import round_request
from fedgov.errors import ValidationFailed
from notifications import signing
from notifications.delivery import deliveries_due, delivery_claim, delivery_send, message_id
from notifications.models import Delivery, Kind, Webhook
from notifications.services import webhook_create

from .conftest import start_receiver, wait_until

pytestmark = pytest.mark.django_db

SECRET = "shared-secret-of-org-a"


def request_round(cast, *, url: str | None = None):
    for user in (cast.rep_a, cast.rep_b):
        user.email = f"{user.username}@example.org"
        user.save(update_fields=["email"])
    if url:
        Webhook.objects.create(organisation=cast.org_a, url=url, secret=SECRET)
    return round_request(actor=cast.admin, plan=cast.plan)


def due_now(delivery: Delivery) -> None:
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))


def test_emails_reach_the_smtp_server_once_with_a_message_id_of_their_own(cast, smtp_sink):
    request_round(cast)
    emails = list(Delivery.objects.filter(channel=Delivery.Channel.EMAIL).order_by("target"))
    assert len(emails) == 2
    for delivery in emails:
        assert delivery_send(delivery_id=delivery.pk) == "delivered"
        assert delivery_send(delivery_id=delivery.pk) == "skipped"  # a repeated task sends nothing
    mail = wait_until(lambda: (m := smtp_sink.records()) and len(m) == 2 and m)
    assert sorted(m["to"][0] for m in mail) == ["rep-a@example.org", "rep-b@example.org"]
    assert {m["message_id"] for m in mail} == {message_id(d) for d in emails}
    assert all("waits for your approval" in m["subject"] and "/rounds/" in m["body"] for m in mail)
    for delivery in emails:
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.DELIVERED and delivery.attempts == 1
        [attempt] = delivery.log.all()
        assert attempt.ok and attempt.status_code == 250 and attempt.finished_at


def test_a_webhook_post_is_signed_and_names_its_delivery(cast, tmp_path):
    receiver = start_receiver(tmp_path, SECRET)
    try:
        request_round(cast, url=f"http://127.0.0.1:{receiver.port}/hook")
        [delivery] = Delivery.objects.filter(channel=Delivery.Channel.WEBHOOK)
        assert delivery_send(delivery_id=delivery.pk) == "delivered"
        [got] = receiver.records()
    finally:
        receiver.proc.kill()
    assert got["signature_ok"] and got["outcome"] == "accepted"
    assert got["delivery"] == got["idempotency_key"] == delivery.idempotency_key
    assert got["kind"] == Kind.APPROVAL_WAITING and got["body"]["organisation"] == "org-a"


def test_a_receiver_with_another_secret_refuses_and_the_call_is_retried(cast, tmp_path):
    receiver = start_receiver(tmp_path, "not-the-secret")
    try:
        request_round(cast, url=f"http://127.0.0.1:{receiver.port}/hook")
        [delivery] = Delivery.objects.filter(channel=Delivery.Channel.WEBHOOK)
        assert delivery_send(delivery_id=delivery.pk).startswith("retry:")
        assert receiver.records()[0]["signature_ok"] is False
    finally:
        receiver.proc.kill()
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and "HTTP 401" in delivery.last_error


def test_failed_calls_are_retried_with_exponential_backoff_and_logged(cast, tmp_path, settings):
    settings.FEDGOV_NOTIFY_BACKOFF_SECONDS = 30
    receiver = start_receiver(tmp_path, SECRET, fail_first=2)
    try:
        request_round(cast, url=f"http://127.0.0.1:{receiver.port}/hook")
        [delivery] = Delivery.objects.filter(channel=Delivery.Channel.WEBHOOK)
        before = timezone.now()
        assert delivery_send(delivery_id=delivery.pk) == "retry:30"
        delivery.refresh_from_db()
        assert delivery.next_attempt_at >= before + timedelta(seconds=30)
        assert delivery_send(delivery_id=delivery.pk) == "skipped"  # not due yet
        due_now(delivery)
        assert delivery_send(delivery_id=delivery.pk) == "retry:60"
        due_now(delivery)
        assert delivery_send(delivery_id=delivery.pk) == "delivered"
        records = receiver.records()
    finally:
        receiver.proc.kill()
    assert [r["outcome"] for r in records] == ["failed", "failed", "accepted"]
    assert len({r["delivery"] for r in records}) == 1  # one id on every try
    log = list(Delivery.objects.get(pk=delivery.pk).log.values_list("number", "ok", "status_code"))
    assert log == [(1, False, 500), (2, False, 500), (3, True, 200)]


def test_a_delivery_out_of_attempts_fails_and_says_why(cast, settings):
    settings.FEDGOV_NOTIFY_MAX_ATTEMPTS = 2
    settings.FEDGOV_NOTIFY_BACKOFF_SECONDS = 0
    from harness.localstack import free_port

    request_round(cast, url=f"http://127.0.0.1:{free_port()}/nobody-listens")
    [delivery] = Delivery.objects.filter(channel=Delivery.Channel.WEBHOOK)
    assert delivery_send(delivery_id=delivery.pk) == "retry:0"
    assert delivery_send(delivery_id=delivery.pk) == "failed"
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED and "ConnectionError" in delivery.last_error
    assert delivery_send(delivery_id=delivery.pk) == "skipped"


def test_an_smtp_server_that_is_down_leaves_the_email_pending(cast, settings):
    from harness.localstack import free_port

    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    request_round(cast)
    delivery = Delivery.objects.filter(channel=Delivery.Channel.EMAIL).first()
    assert delivery_send(delivery_id=delivery.pk).startswith("retry:")
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and "ConnectionRefusedError" in delivery.last_error


def test_a_delivery_is_claimed_once_and_a_dead_workers_claim_expires(cast, settings):
    request_round(cast)
    delivery = Delivery.objects.filter(channel=Delivery.Channel.EMAIL).first()
    first = delivery_claim(delivery_id=delivery.pk)
    assert first is not None
    assert delivery_claim(delivery_id=delivery.pk) is None  # a second task for the same row
    assert delivery.pk not in deliveries_due()
    # The worker holding the claim died: once the lease runs out the sweep hands it out again.
    Delivery.objects.filter(pk=delivery.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert delivery.pk in deliveries_due()
    again = delivery_claim(delivery_id=delivery.pk)
    assert again is not None and again[0].attempts == 2 and again[0].claim_token != first[0].claim_token
    first_attempt = again[0].log.get(number=1)
    assert first_attempt.finished_at and "lease expired" in first_attempt.error
    # The first worker, had it survived, can no longer mark the row: its token is stale.
    from notifications.delivery import SendResult, _record

    _record(first[0], first[1], SendResult(True, 250))
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.SENDING


def test_signatures_refuse_a_changed_body_a_wrong_secret_and_an_old_timestamp():
    body = b'{"kind":"approval_waiting"}'
    now = int(time.time())
    sig = signing.sign("k", now, body)
    assert signing.verify("k", timestamp=str(now), signature=sig, body=body)
    assert not signing.verify("k", timestamp=str(now), signature=sig, body=body + b" ")
    assert not signing.verify("other", timestamp=str(now), signature=sig, body=body)
    assert not signing.verify("k", timestamp=str(now + 1), signature=sig, body=body)  # the timestamp is signed
    old = now - 3600
    assert not signing.verify("k", timestamp=str(old), signature=signing.sign("k", old, body), body=body)


def test_webhooks_to_private_addresses_are_refused_when_not_allowed(cast, settings):
    settings.FEDGOV_WEBHOOK_ALLOW_PRIVATE = False
    for url in ("http://127.0.0.1:6379/", "http://10.0.0.5/hook", "http://[::1]/x", "ftp://example.org/"):
        with pytest.raises(ValidationFailed):
            webhook_create(actor=cast.rep_a, organisation=cast.org_a, url=url)
    assert not Webhook.objects.exists()
    # One saved earlier (or a name that now resolves to a private address) is refused at send time.
    request_round(cast, url="http://127.0.0.1:9/hook")
    [delivery] = Delivery.objects.filter(channel=Delivery.Channel.WEBHOOK)
    assert delivery_send(delivery_id=delivery.pk).startswith("retry:")
    assert "private, loopback" in Delivery.objects.get(pk=delivery.pk).last_error


def test_a_broker_that_is_down_at_commit_loses_nothing(cast, django_capture_on_commit_callbacks, settings):
    """Enqueueing fails (no Redis listens): the request still succeeds, the outbox rows stay
    pending, and the sweep hands them out once they are overdue."""
    from fedgov.celery import app
    from harness.localstack import free_port, use_broker

    settings.FEDGOV_NOTIFY_SWEEP_GRACE_SECONDS = 0
    previous = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            round = request_round(cast)
    finally:
        use_broker(previous)
    pending = list(Delivery.objects.filter(status=Delivery.Status.PENDING).values_list("id", flat=True))
    assert round.pk and len(pending) == 2
    assert set(pending) <= set(deliveries_due(now=timezone.now() + timedelta(seconds=1)))
