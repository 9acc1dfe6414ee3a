"""python -m federation.agent --server URL --token TOKEN --data FILE.csv [--state DIR]"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .runner import Agent, AgentConfig, load_coordinator_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federation.agent", description="fedgov partner agent")
    parser.add_argument("--server", required=True, help="coordinator URL, e.g. https://fedgov.example.org")
    parser.add_argument("--token", required=True, help="this organisation's agent token")
    parser.add_argument("--data", required=True, type=Path, help="the local CSV file (never leaves this machine)")
    parser.add_argument("--state", type=Path, default=Path.home() / ".fedgov-agent", help="where the identity key is kept")
    parser.add_argument("--dropout", type=float, default=0.0, help="simulations: probability of skipping a round's masked input")
    parser.add_argument("--poll-wait", type=float, default=10.0, help="seconds a poll may wait for work")
    parser.add_argument(
        "--send-retry", type=float, default=60.0,
        help="seconds to keep retrying a message the coordinator does not answer; after that it is sent again when asked",
    )
    parser.add_argument(
        "--coordinator-key",
        help="the coordinator's ledger public key (64 hex digits, or a file with them or its PEM): enrolment must announce "
        "this key, and every round ticket must be signed by it; without it, the key seen at first enrolment is pinned",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s agent: %(message)s")
    if not args.server.startswith(("http://", "https://")):
        parser.error("--server must be an http:// or https:// URL")
    if not args.data.is_file():
        parser.error(f"--data {args.data} is not a readable file")
    if not 0.0 <= args.dropout <= 1.0:
        parser.error("--dropout must be between 0 and 1")
    if args.poll_wait <= 0 or args.send_retry <= 0:
        parser.error("--poll-wait and --send-retry must be positive numbers of seconds")
    coordinator_key = None
    if args.coordinator_key:
        try:
            coordinator_key = load_coordinator_key(args.coordinator_key)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
    agent = Agent(
        AgentConfig(
            server=args.server, token=args.token, data=args.data, state_dir=args.state, dropout=args.dropout,
            poll_wait=args.poll_wait, send_retry=args.send_retry, coordinator_key=coordinator_key,
        )
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
