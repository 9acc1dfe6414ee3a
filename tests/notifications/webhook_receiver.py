"""A real HTTP receiver for webhooks: `python webhook_receiver.py PORT LOG SECRET [FAIL_FIRST]
[STALL_FILE]`. SECRET is the shared secret, or `@FILE`: a JSON object of path -> secret, one
per webhook the receiver stands for. Every POST is appended to LOG (JSON lines) with whether its signature verifies
(notifications.signing.verify, the reference a partner would copy) and whether its delivery
id was already accepted. The first FAIL_FIRST requests answer 500. With STALL_FILE, the
first request is held (no answer) until that file exists, so a test can kill the sender
mid-delivery; a request that was never answered is not accepted."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from notifications import signing  # noqa: E402 -- standard library only; no Django

PORT, LOG, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def secret_for(path: str) -> str:
    if not SECRET.startswith("@"):
        return SECRET
    with open(SECRET[1:]) as fh:  # read per request: the test writes it once the webhooks exist
        return json.load(fh).get(path, "")
FAIL_FIRST = int(sys.argv[4]) if len(sys.argv) > 4 else 0
STALL_FILE = sys.argv[5] if len(sys.argv) > 5 else ""
lock = threading.Lock()
state = {"requests": 0, "accepted": set()}


def log(record: dict) -> None:
    with lock, open(LOG, "a") as fh:
        fh.write(json.dumps(record) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 -- http.server's hook name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        delivery = self.headers.get(signing.DELIVERY_HEADER)
        ok = signing.verify(secret_for(self.path), timestamp=self.headers.get(signing.TIMESTAMP_HEADER),
                            signature=self.headers.get(signing.SIGNATURE_HEADER), body=body)
        with lock:
            state["requests"] += 1
            n = state["requests"]
        record = {"n": n, "path": self.path, "delivery": delivery, "idempotency_key": self.headers.get("Idempotency-Key"),
                  "kind": self.headers.get(signing.EVENT_HEADER), "signature_ok": ok, "body": json.loads(body or b"null")}
        if STALL_FILE and n == 1:
            log({**record, "outcome": "stalled"})
            while not os.path.exists(STALL_FILE):
                time.sleep(0.05)
            return  # never answered: the sender died waiting; nothing was accepted
        if n <= FAIL_FIRST:
            log({**record, "outcome": "failed"})
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"try later")
            return
        with lock:
            duplicate = delivery in state["accepted"]
            state["accepted"].add(delivery)
        log({**record, "outcome": "duplicate" if duplicate else "accepted"})
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
