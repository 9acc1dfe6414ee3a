"""services/enqueue.py against a real Redis and a real Celery worker: a task is sent by its name
only once the transaction commits, never when it rolls back, on the queue its name routes to,
with its countdown; and a worker runs the task the name designates."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis as redis_lib
from django.db import transaction

from federation.models import GovernanceEvent, TrainingRound
from federation.services import enqueue
from federation.services.rounds import round_request
from harness.localstack import django_env, start_redis, start_worker, stop, use_broker
from tests.tamper import force_update

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def broker(tmp_path):
    """A Redis of its own, this process's Celery app pointed at it for the test."""
    from fedgov.celery import app

    old = app.conf.broker_url
    server = start_redis(tmp_path)
    url = f"redis://127.0.0.1:{server.port}/0"
    use_broker(url)
    try:
        yield url, redis_lib.Redis.from_url(url)
    finally:
        use_broker(old)
        stop(server.popen)


def _messages(client, queue):
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_a_task_is_sent_by_name_after_the_commit_on_its_queue_and_never_after_a_rollback(broker):
    _, client = broker
    with transaction.atomic():
        enqueue.after_commit(enqueue.PHASE_CLOSE, 41, "advertise_keys", countdown=30)
        assert client.llen("fedgov.rounds") == 0  # nothing leaves before the commit
    (message,) = _messages(client, "fedgov.rounds")
    assert message["headers"]["task"] == "fedgov.rounds.close_phase"
    assert message["headers"]["eta"] is not None  # the phase's deadline
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([41, "advertise_keys"], {})

    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue.after_commit(enqueue.ROUND_AGGREGATE, 42)
        raise RuntimeError("rolled back")
    assert client.llen("fedgov.aggregation") == 0

    enqueue.after_commit(enqueue.PLAN_RETRY, 43)  # outside a transaction: at once
    (message,) = [m for m in _messages(client, "fedgov.rounds") if m["headers"]["task"] == "fedgov.rounds.retry"]
    assert message["headers"]["eta"] is None


def test_a_worker_runs_the_task_the_name_designates(broker, cast, tmp_path):
    url, _ = broker
    round = round_request(actor=cast.admin, plan=cast.plan)
    force_update(TrainingRound, round.pk, status=TrainingRound.Status.APPROVED)
    worker = start_worker(django_env(REDIS_URL=url), tmp_path, name="enqueue", queues="fedgov.rounds", concurrency=1, supervise=False)
    try:
        with transaction.atomic():
            enqueue.after_commit(enqueue.ROUND_START, round.pk)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            round.refresh_from_db()
            if round.status != TrainingRound.Status.APPROVED:
                break
            time.sleep(0.5)
        # round_start ran in the worker: its re-check finds that nobody approved the round
        # (it was set APPROVED behind the services' back), so it is blocked, saying so.
        assert round.status == TrainingRound.Status.BLOCKED, worker.tail()
        assert round.reason.startswith("approvals: 0 of 3 required approvals given")
        assert GovernanceEvent.objects.filter(round=round, kind=GovernanceEvent.Kind.ROUND_BLOCKED, message__contains="blocked at start").exists()
    finally:
        stop(worker.popen)
