"""python -m federation.agent --server URL --token TOKEN --data FILE.csv [--state DIR]
       [--data-id ID] [--budget EPSILON --delta DELTA]
python -m federation.agent ledger --state DIR [--verify] [--json]
python -m federation.agent reconcile --state DIR --bundle FILE [--coordinator-key KEY] [--coordinator NAME]
       [--dataset SLUG ...] [--json]"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
from pathlib import Path

from .config import AgentConfig
from .identity import PINNED_KEY_FILE, load_coordinator_key, load_public_identity
from .ledger_format import LEDGER_FILE
from .ledger_view import LedgerView, read_ledger
from .runner import Agent

DEFAULT_STATE = Path.home() / ".fedgov-agent"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ledger"]:
        return ledger_main(argv[1:])
    if argv[:1] == ["reconcile"]:
        return reconcile_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m federation.agent", description="fedgov partner agent")
    parser.add_argument("--server", required=True, help="coordinator URL, e.g. https://fedgov.example.org")
    parser.add_argument("--token", required=True, help="this organisation's agent token")
    parser.add_argument("--data", required=True, type=Path, help="the local CSV file (never leaves this machine)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="where the identity key and the partner ledger are kept")
    parser.add_argument(
        "--data-id",
        help="the data source's id in the partner ledger (default: the data file's absolute path); "
        "every coordinator dataset on the same records shares its one local budget",
    )
    parser.add_argument("--budget", type=float, metavar="EPSILON", help="the local epsilon budget for this data (default: the smallest a coordinator showed)")
    parser.add_argument("--delta", type=float, help="the local budget's delta (with --budget)")
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
    if (args.budget is None) != (args.delta is None):
        parser.error("--budget and --delta go together")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        parser.error("--budget must be a positive epsilon")
    if args.delta is not None and not 0.0 < args.delta < 1.0:
        parser.error("--delta must be between 0 and 1 (exclusive)")
    if args.data_id is not None and not args.data_id.strip():
        parser.error("--data-id must not be empty")
    # The local ledger's settings (docs/PARTNER-LEDGER.md). A runner that cannot take them is
    # refused loudly: silently ignoring an operator's budget would be worse than not starting.
    ledger_settings = {"data_id": args.data_id, "budget": args.budget, "delta": args.delta}
    accepted = {f.name for f in dataclasses.fields(AgentConfig)}
    given = sorted(f"--{k.replace('_', '-')}" for k, v in ledger_settings.items() if v is not None and k not in accepted)
    if given:
        parser.error(f"this agent's runner does not take {', '.join(given)} yet")
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
            **{k: v for k, v in ledger_settings.items() if k in accepted},
        )
    )
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    return 0


def ledger_main(argv: list[str]) -> int:
    """Show (and with --verify, check) the partner ledger of a state directory. Never writes.

    Exit codes: 0 fine, 1 corrupt or unreadable, 2 usage (argparse).
    """
    parser = argparse.ArgumentParser(
        prog="python -m federation.agent ledger", description="show and verify this agent's own privacy ledger"
    )
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="the agent's state directory")
    parser.add_argument("--verify", action="store_true", help="recompute the hash chain and the composition")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        view = read_ledger(args.state, verify=args.verify)
    except OSError as exc:
        message = f"no partner ledger readable at {args.state / LEDGER_FILE}: {exc.strerror or exc}"
        if args.json:
            print(json.dumps({"path": str(args.state / LEDGER_FILE), "ok": False, "error": {"code": "ledger_unreadable", "message": message}}))
        else:
            print(message, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view.to_json(), sort_keys=True))
    else:
        _print_ledger(view)
    return 0 if view.error is None else 1


def reconcile_main(argv: list[str]) -> int:
    """Compare the coordinator's audit bundle with this agent's own ledger, round by round
    (federation/agent/reconcile.py). Never writes.

    Exit codes: 0 the books agree, 1 they disagree, 2 they cannot be compared (usage, an
    unreadable or unverifiable ledger or bundle, no pinned coordinator key, a key not enrolled).
    """
    from accounting import bundle as bundle_mod
    from accounting import manifest

    from .reconcile import ReconcileError, reconcile

    parser = argparse.ArgumentParser(
        prog="python -m federation.agent reconcile",
        description="check the coordinator's audit bundle against this agent's own privacy ledger",
    )
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="the agent's state directory")
    parser.add_argument("--bundle", required=True, type=Path, help="the coordinator's audit bundle (export_ledger, or the audit page)")
    parser.add_argument(
        "--coordinator-key",
        help="the coordinator's ledger public key (64 hex digits, or a file with them or its PEM); default: the key this agent pinned",
    )
    parser.add_argument(
        "--coordinator",
        help="the name this ledger's rounds carry for the coordinator (default: its ledger key; agents that pinned no key used the server URL)",
    )
    parser.add_argument("--dataset", action="append", metavar="SLUG", help="only this dataset (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's convergence chatter, not the partner's concern

    def cannot(message: str) -> int:
        print(json.dumps({"ok": False, "error": message}) if args.json else f"cannot reconcile: {message}", file=sys.stdout if args.json else sys.stderr)
        return 2

    try:
        coordinator_key = load_coordinator_key(args.coordinator_key) if args.coordinator_key else (
            (args.state / PINNED_KEY_FILE).read_text().strip()
        )
    except FileNotFoundError:
        return cannot(f"no coordinator key: this agent pinned none in {args.state / PINNED_KEY_FILE}; give --coordinator-key")
    except (ValueError, OSError) as exc:
        return cannot(str(exc))
    try:
        agent_key = load_public_identity(args.state)
    except (ValueError, OSError) as exc:
        return cannot(f"no agent identity in {args.state}: {exc}")
    try:
        view = read_ledger(args.state, verify=True)
    except OSError as exc:
        return cannot(f"no partner ledger readable at {args.state / LEDGER_FILE}: {exc.strerror or exc}")
    if view.error is not None:
        return cannot(f"this agent's own ledger does not verify: {view.error.message}")
    try:
        bundle = bundle_mod.load(str(args.bundle))
        result = reconcile(
            bundle, view.entries, agent_key=agent_key, pinned_key_id=manifest.key_id_of(bytes.fromhex(coordinator_key)),
            coordinator=args.coordinator or coordinator_key, datasets=args.dataset,
        )
    except (ReconcileError, manifest.BundleError) as exc:
        return cannot(str(exc))
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        print("\n".join(result.lines()))
    return 0 if result.ok else 1


def _fmt(value: object, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def _print_ledger(view: LedgerView) -> None:
    status = "verified (hash chain, protocol and composition recomputed)" if view.verified and view.error is None else (
        "NOT verified (stored figures; use --verify)" if not view.verified else "VERIFICATION FAILED"
    )
    print(f"partner ledger {view.path}: {len(view.entries)} entries, head {view.head_hash[:16]}...; {status}")
    if view.torn_bytes:
        print(f"  a partial last line ({view.torn_bytes} bytes) left by a crash mid-append is ignored")
    for data_id, d in view.by_data().items():
        print(f"data {data_id}")
        print(
            f"  budget epsilon {_fmt(d['budget'])} at delta {_fmt(d['delta'], 'g')} ({d['budget_source'] or 'none set or shown'}, "
            f"{d['accountant'] or '-'}); spent {_fmt(d['spent'])}, remaining {_fmt(d['remaining'])}"
        )
        print(f"  rounds: {d['reserved']} reserved (open), {d['committed']} committed, {d['released']} released")
        for fp in d["fingerprints"]:
            print(f"  records {fp.get('records')} ({fp.get('bytes')} bytes, sha256 {str(fp.get('sha256'))[:16]}...)")
        for e in d["entries"]:
            rnd = e.get("round")
            what = (
                f"round {rnd.get('round')} of {rnd.get('dataset')} at {rnd.get('coordinator')}" if isinstance(rnd, dict)
                else json.dumps(e.get("payload"), sort_keys=True)
            )
            print(f"  #{e.get('seq')} {e.get('kind', '?'):<8} {what}; spent after {_fmt(e.get('epsilon_spent_after'))}")
    if view.error is not None:
        print(f"FAILED at entry #{view.error.seq}: {view.error.reason}")


if __name__ == "__main__":
    sys.exit(main())
