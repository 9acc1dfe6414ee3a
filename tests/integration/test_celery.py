"""Celery is real: a task goes through a real Redis to a real worker process and back."""

import pytest

from harness.localstack import django_env, start_redis, start_worker, stop

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_task_round_trips_through_redis_and_a_worker_process(tmp_path):
    redis = start_redis(tmp_path)
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        worker = start_worker(django_env(REDIS_URL=url), tmp_path, name="w1", concurrency=1)
        try:
            from celery import Celery

            app = Celery("probe", broker=url, backend=url, set_as_current=False)
            result = app.send_task("fedgov.ping", args=["hello"], queue="fedgov.default")
            answer = result.get(timeout=60)
            assert answer["pong"] == "hello"
            # The answer came from the worker process, not from this one.
            assert answer["worker"].startswith("w1@")
            assert worker.alive(), worker.tail()
        finally:
            stop(worker.popen)
    finally:
        stop(redis.popen)
