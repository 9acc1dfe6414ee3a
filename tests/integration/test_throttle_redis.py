"""Failure counts are shared through Redis: wrong passwords sent to a real gunicorn (two worker
processes) lock the username out, and another process reading the same Redis sees it."""

from __future__ import annotations

import pytest
import redis as redis_client
import requests
from django.test import RequestFactory, override_settings

from fedgov.throttles import password_wait
from harness.localstack import django_env, start_redis, start_web, stop
from tests.factories import UserFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_failed_logins_are_counted_in_redis_and_seen_by_every_process(tmp_path):
    UserFactory(username="rep-a")
    redis = start_redis(tmp_path)
    try:
        url = f"redis://127.0.0.1:{redis.port}/1"
        web = start_web(django_env(CACHE_REDIS="1", CACHE_URL=url), tmp_path, workers=2, threads=2)
        try:
            base = f"http://127.0.0.1:{web.port}/api/v1/auth/token/"
            statuses = []
            for i in range(12):
                body = {"username": "rep-a", "password": f"guess{i}", "scopes": ["read"]}
                # Each request on a new connection: either worker may answer it.
                statuses.append(requests.post(base, json=body, headers={"X-Forwarded-For": f"10.0.{i}.1"}, timeout=30).status_code)
            assert statuses == [401] * 10 + [429, 429], web.tail()
            right = requests.post(base, json={"username": "rep-a", "password": "pw", "scopes": ["read"]}, timeout=30)
            assert right.status_code == 429
        finally:
            stop(web.popen)
        assert redis_client.Redis.from_url(url).keys("fedgov:*failed:password:user:*")
        # This test process, with the same cache settings, sees the lockout too.
        caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": "fedgov"}}
        with override_settings(CACHES=caches):
            assert password_wait(RequestFactory().post("/", REMOTE_ADDR="192.0.2.1"), "rep-a") > 0
            assert password_wait(RequestFactory().post("/", REMOTE_ADDR="192.0.2.1"), "rep-b") == 0
    finally:
        stop(redis.popen)


RACER = """
import os, sys, time
import django
django.setup()
from fedgov.throttles import FailureThrottle
throttle = FailureThrottle("race", "{limit}/15m")
start = float(sys.argv[1])
while time.time() < start:  # every process starts at the same instant
    time.sleep(0.001)
for _ in range({per_process}):
    throttle.record([("user", "rep-race")])
"""


def test_failures_recorded_at_once_by_many_processes_are_each_counted(tmp_path):
    """A guesser's parallel wrong passwords land in different web processes at the same
    instant; each must count (a read-then-write history would keep one of a clash)."""
    import subprocess
    import sys
    import time

    from django.core.cache import caches as django_caches

    from fedgov.throttles import FailureThrottle

    processes, per_process = 4, 50
    limit = processes * per_process
    redis = start_redis(tmp_path)
    try:
        url = f"redis://127.0.0.1:{redis.port}/1"
        env = django_env(CACHE_REDIS="1", CACHE_URL=url)
        script = RACER.format(limit=limit, per_process=per_process)
        start = time.time() + 3
        racers = [subprocess.Popen([sys.executable, "-c", script, str(start)], env=env, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
        for racer in racers:
            assert racer.wait(timeout=120) == 0, racer.stderr.read()
        caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": "fedgov"}}
        with override_settings(CACHES=caches):
            try:
                # Exactly the limit: locked out; one fewer allowed would not be.
                assert FailureThrottle("race", f"{limit}/15m").check([("user", "rep-race")]) > 0
                assert FailureThrottle("race", f"{limit + 1}/15m").check([("user", "rep-race")]) == 0
            finally:
                django_caches["default"].close()
    finally:
        stop(redis.popen)
