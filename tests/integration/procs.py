"""Real processes for integration tests: a Redis server, Celery workers, a web server.

Each helper starts the real program on loopback with a free port, waits until it answers,
and stops it (SIGTERM, then SIGKILL) when the test ends. Nothing here is a stand-in.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if not path:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (make test does it)")
    return path


@contextmanager
def redis_server(port: int | None = None):
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="fedgov-redis-")
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0", proc, port
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings_test")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


@contextmanager
def celery_worker(env: dict, *, queues: str = "fedgov.default,fedgov.rounds,fedgov.aggregation,fedgov.deadlines", name: str = "w1", concurrency: int = 1, log: Path | None = None):
    log = log or Path(tempfile.mkstemp(prefix=f"fedgov-celery-{name}-", suffix=".log")[1])
    fh = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "fedgov", "worker", "-Q", queues, "-n", f"{name}@%h",
         "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
        cwd=ROOT,
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc, log
    finally:
        stop(proc)
        fh.close()
