"""A real SMTP server (aiosmtpd) on loopback that appends each message it accepts to a
JSON-lines file: `python smtp_sink.py PORT FILE`. Started as its own process by the tests."""

from __future__ import annotations

import asyncio
import email
import json
import sys
from email import policy

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, path: str) -> None:
        self.path = path

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 -- aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "message_id": message["Message-ID"],
            "delivery": message["X-Fedgov-Delivery"],
            "subject": str(message["Subject"]),
            "body": message.get_body(("plain",)).get_content(),
        }
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Sink(path), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
