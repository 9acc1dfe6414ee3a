"""A real HTTP proxy on loopback that loses messages the way a network does, for the agent's
delivery tests: it forwards every request to the coordinator, except that

- `answer_lost` phases: the first POST of that phase reaches the coordinator, and the
  connection is then closed before its answer gets back (the agent cannot know it arrived);
- `request_lost` phases: every POST of that phase is dropped, unanswered, during the first
  `request_lost_for` seconds after the first one (the coordinator never sees them).

What it did is kept in `events`, so a test can check the faults really happened.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class LossyProxy:
    def __init__(self, upstream: str, *, answer_lost=(), request_lost=(), request_lost_for: float = 3.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.answer_lost = set(answer_lost)
        self.request_lost = set(request_lost)
        self.request_lost_for = request_lost_for
        self.events: list[tuple[str, str]] = []  # (what happened, path)
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, what: str) -> int:
        return sum(1 for event, _ in self.events if event == what)

    def _fault(self, method: str, path: str) -> str | None:
        if method != "POST":
            return None
        phase = path.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            now = time.monotonic()
            first = self._first_seen.setdefault(path, now)
            if phase in self.request_lost and now - first < self.request_lost_for:
                return "request_lost"
            if phase in self.answer_lost and not any(e == "answer_lost" and p == path for e, p in self.events):
                return "answer_lost"
        return None

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        fault = self._fault(handler.command, handler.path)
        if fault == "request_lost":
            self.events.append((fault, handler.path))
            handler.close_connection = True
            handler.connection.close()
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        response = requests.request(handler.command, self.upstream + handler.path, data=body, headers=headers, timeout=120)
        if fault == "answer_lost":
            self.events.append((fault, handler.path))
            handler.close_connection = True
            handler.connection.close()
            return
        handler.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in HOP_BY_HOP:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(response.content)))
        handler.end_headers()
        handler.wfile.write(response.content)
