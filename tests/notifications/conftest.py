"""Real servers for the notification tests: an SMTP server (aiosmtpd) and an HTTP webhook
receiver, each its own process on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.localstack import free_port, stop, wait_for_port

HERE = Path(__file__).resolve().parent


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


@dataclass
class Server:
    port: int
    log: Path
    proc: subprocess.Popen

    def records(self) -> list[dict]:
        return read_lines(self.log)


def _spawn(args: list[str], port: int, log: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    out = (tmp_path / f"{name}.out").open("ab")
    proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    wait_for_port(port, proc=proc, log=tmp_path / f"{name}.out")
    return proc


@pytest.fixture
def smtp_sink(tmp_path, settings):
    """aiosmtpd on loopback; the settings point Django's SMTP backend at it."""
    port, log = free_port(), tmp_path / "mail.jsonl"
    proc = _spawn([str(HERE / "smtp_sink.py"), str(port), str(log)], port, log, tmp_path, "smtp")
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    try:
        yield Server(port, log, proc)
    finally:
        stop(proc)


def start_receiver(tmp_path: Path, secret: str, *, fail_first: int = 0, stall_file: Path | None = None, name: str = "hook") -> Server:
    port, log = free_port(), tmp_path / f"{name}.jsonl"
    args = [str(HERE / "webhook_receiver.py"), str(port), str(log), secret, str(fail_first)]
    if stall_file is not None:
        args.append(str(stall_file))
    return Server(port, log, _spawn(args, port, log, tmp_path, name))
