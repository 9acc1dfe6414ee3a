"""Waking the agents' long polls when a round opens a phase they answer.

`GET /api/v1/agent/tasks/` holds the request open until there is work. Finding that work by
re-reading the database every few milliseconds costs a query per waiting agent per tick
(50 agents at 20 ms: 2,500 queries a second, competing for the CPU and SQLite's lock with
the very submissions and tasks that move the rounds) and still adds a tick to every phase.

Instead, whoever opens a phase announces it after its commit on a Redis channel
(`announce_agent_work`); one listener thread per web process wakes the requests waiting in
that process, and each re-reads its tasks from the database, which stays the only source of
truth. The message carries nothing but "look again". A lost message (Redis restarting, the
listener reconnecting) costs latency, not correctness: a waiting request re-reads at least
every FALLBACK_SECONDS, and the listener wakes everyone whenever it (re)subscribes.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

CHANNEL = "fedgov:agent-work"
# How often a waiting long poll re-reads the database when no announcement wakes it: only
# the safety net for lost messages, so it can be coarse.
FALLBACK_SECONDS = 1.0

_publisher: redis.Redis | None = None
_publisher_lock = threading.Lock()


def _publisher_client() -> redis.Redis:
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            # Short timeouts: a Redis that is down must not hold a phase transition for long;
            # the agents then find the phase at their next fallback read.
            _publisher = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        return _publisher


def _publish(round_id: int) -> None:
    try:
        _publisher_client().publish(CHANNEL, str(round_id))
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not announce new agent work for round %s (%s); agents find it at their next poll", round_id, exc)


def announce_agent_work(round_id: int) -> None:
    """Tell waiting agents, once the current transaction commits, that round `round_id`
    has new work (after the commit: a woken agent must find the phase in the database)."""
    transaction.on_commit(lambda: _publish(round_id), robust=True)


class _Waiters:
    """A generation counter bumped on every announcement, and a condition to wait on it.

    A request reads the generation *before* reading its tasks and then waits for it to
    change: an announcement that lands between the two is not missed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._listener: threading.Thread | None = None
        self._pid: int | None = None

    def generation(self) -> int:
        self._ensure_listener()
        with self._cond:
            return self._generation

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen, timeout)

    def bump(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _ensure_listener(self) -> None:
        with self._cond:
            # One listener per process (a forked web worker starts its own).
            if self._listener is not None and self._pid == os.getpid() and self._listener.is_alive():
                return
            self._pid = os.getpid()
            self._listener = threading.Thread(target=self._listen, name="fedgov-agent-wakeup", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        delay, warned = 0.1, False
        while True:
            try:
                client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                if warned:
                    logger.info("agent wake-up channel back")
                delay, warned = 0.1, False
                self.bump()  # announcements made while unsubscribed were missed: everyone looks again
                while True:
                    if pubsub.get_message(timeout=30) is not None:
                        self.bump()
            except (redis.RedisError, OSError) as exc:
                # Once per outage: the listener retries every few seconds for as long as it lasts.
                (logger.debug if warned else logger.warning)(
                    "agent wake-up channel unavailable (%s); long polls fall back to reading every %.1fs", exc, FALLBACK_SECONDS
                )
                warned = True
                time.sleep(delay)
                delay = min(5.0, delay * 2)


waiters = _Waiters()
