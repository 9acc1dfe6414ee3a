"""Celery is real: a task goes through a real Redis to a real worker process and back."""

import pytest

from .procs import celery_worker, child_env, redis_server

pytestmark = pytest.mark.integration


def test_a_task_round_trips_through_redis_and_a_worker_process(tmp_path):
    with redis_server() as (url, _redis, _port):
        env = child_env(REDIS_URL=url, FEDGOV_VAR_DIR=str(tmp_path))
        with celery_worker(env) as (worker, log):
            from celery import Celery

            app = Celery("probe", broker=url, backend=url)
            result = app.send_task("fedgov.ping", args=["hello"], queue="fedgov.default")
            answer = result.get(timeout=60)
            assert answer["pong"] == "hello"
            # The answer came from the worker process, not from this one.
            assert answer["worker"].startswith("w1@")
            assert worker.poll() is None, log.read_text()
