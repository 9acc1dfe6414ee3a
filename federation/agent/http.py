"""A small HTTP client for the coordinator's agent API, with retries and backoff.

A coordinator that restarts, or a network that drops a request, must not stop the agent:
connection errors and 5xx answers are retried with exponential backoff; 4xx answers are
the coordinator refusing a message, which the caller handles.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import requests

logger = logging.getLogger("fedgov.agent")

# The agent software's version, sent as `User-Agent: fedgov-agent/<version>` on every request:
# the coordinator's agents page shows which partner runs what.
VERSION = "0.2.0"
USER_AGENT = f"fedgov-agent/{VERSION}"


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    details: dict = field(default_factory=dict)

    @property
    def is_replay(self) -> bool:
        """The coordinator already holds this very message (our earlier POST arrived but
        its answer was lost): for the sender, a success."""
        return self.code == "protocol_rejected" and self.details.get("secagg_code") == "replay"

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class CoordinatorClient:
    def __init__(self, server: str, token: str, *, timeout: float = 60.0, max_backoff: float = 10.0) -> None:
        self.base = server.rstrip("/") + "/api/v1/agent/"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "User-Agent": USER_AGENT})
        self.timeout = timeout
        self.max_backoff = max_backoff

    def _request(self, method: str, path: str, *, retry_for: float = 600.0, raw: bool = False, **kwargs) -> Any:
        delay, deadline = 0.2, time.monotonic() + retry_for
        while True:
            try:
                response = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                if time.monotonic() >= deadline:
                    raise
                logger.warning("coordinator unreachable (%s); retrying in %.1fs", exc.__class__.__name__, delay)
            else:
                if response.status_code < 400:
                    return response.content if raw else response.json()
                if response.status_code < 500:
                    try:
                        body = response.json()
                    except ValueError:
                        body = {"code": "http_error", "message": response.text[:200]}
                    details = body.get("details") if isinstance(body.get("details"), dict) else {}
                    raise ApiError(response.status_code, body.get("code", "error"), body.get("message", ""), details)
                if time.monotonic() >= deadline:
                    raise ApiError(response.status_code, "server_error", response.text[:200])
                logger.warning("coordinator answered %s; retrying in %.1fs", response.status_code, delay)
            time.sleep(delay)
            delay = min(self.max_backoff, delay * 2)

    def enrol(self, public_key_hex: str) -> dict:
        return self._request("POST", "enrol/", json={"public_key": public_key_hex})

    def tasks(self, wait: float = 10.0) -> list[dict]:
        return self.poll(wait)["tasks"]

    def poll(self, wait: float = 10.0) -> dict:
        """The long poll's whole answer: the tasks, and the terms the organisation holds now."""
        return self._request("GET", "tasks/", params={"wait": wait})

    def model(self, url: str, *, retry_for: float = 60.0) -> bytes:
        """A model's raw parameters, from the path the task names (relative to the agent API)."""
        return self._request("GET", url, raw=True, retry_for=retry_for)

    def submit(self, round_pk: int, phase: str, body: bytes, *, binary: bool = False, retry_for: float = 60.0) -> dict:
        content_type = "application/octet-stream" if binary else "application/json"
        return self._request(
            "POST", f"rounds/{round_pk}/{phase}/", data=body, headers={"Content-Type": content_type}, retry_for=retry_for
        )

    def submit_json(self, round_pk: int, phase: str, payload: dict) -> dict:
        return self.submit(round_pk, phase, json.dumps(payload).encode())

    def refuse(self, round_pk: int, code: str, reason: str, *, retry_for: float = 60.0) -> dict:
        """Tell the coordinator this agent declines the round, and why."""
        return self._request("POST", f"rounds/{round_pk}/refuse/", json={"code": code, "reason": reason[:2000]}, retry_for=retry_for)

    def receipt(self, round_pk: int, receipt: dict, *, retry_for: float = 60.0) -> dict:
        """Send the signed receipt of a round whose masked input this agent sent."""
        return self._request("POST", f"rounds/{round_pk}/receipt/", json=receipt, retry_for=retry_for)
