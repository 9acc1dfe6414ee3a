"""The auditor's verifier: `python -m accounting.verify BUNDLE [--since OLD] [--public-key KEY |
--trust-bundle-key] [--agent-keys FILE] [--dataset SLUG]` (ARCHITECTURE.md, Trust between the coordinator and the
partners 5; docs/TRUST-FORMATS.md).

Needs numpy, dp-accounting and cryptography only: no Django, DRF or Celery, so an auditor
runs it without the coordinator's stack. `manage.py verify_ledger --bundle` calls
`verify_files` below, so both give the same verdict.

It verifies every chain's entries, signed heads and recomposed epsilon (accounting/bundle.py),
the partners' receipts of every committed round that names a ticket, and, with --since, that
the bundle extends an older one. It prints the fingerprint of the coordinator key it
verified against and refuses to pass unless that key is pinned (--public-key, a PEM file,
or 64 hex digits inline or in a file) or the auditor explicitly trusts the bundle's own key
(--trust-bundle-key). The agent keys receipts are checked against come from the bundle,
covered by the coordinator's signed manifest, or, with --agent-keys FILE (JSON
{organisation: [hex keys]}), from the auditor's own pins, which the coordinator cannot swap.

Exit status: 0 verified; 1 the bundle does not verify (the message names the entry);
2 usage (no pinned key, unreadable key).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import bundle, manifest

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class VerifyFailed(Exception):
    """The verdict is not a pass; `exit_code` says whether the bundle or the call is at fault."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.lines = lines or []


@dataclass
class Verdict:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def pinned_key_id(value: str) -> str:
    """The key id (sha256 of the raw Ed25519 key) of --public-key: a PEM file, a file holding
    64 hex digits, or 64 hex digits."""
    if os.path.isfile(value):
        try:
            with open(value, "rb") as f:
                data = f.read()
        except OSError as e:
            raise VerifyFailed(f"cannot read the public key {value}: {e}", exit_code=EXIT_USAGE) from None
        text = data.decode("utf-8", "replace").strip()
        if _HEX64.fullmatch(text):
            return manifest.key_id_of(bytes.fromhex(text))
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise VerifyFailed(f"{value} is neither a PEM public key nor 64 hex digits: {e}", exit_code=EXIT_USAGE) from None
        if not isinstance(key, Ed25519PublicKey):
            raise VerifyFailed(f"{value} is not an Ed25519 public key", exit_code=EXIT_USAGE)
        return manifest.key_id_of(key.public_bytes_raw())
    if _HEX64.fullmatch(value.strip()):
        return manifest.key_id_of(bytes.fromhex(value.strip()))
    raise VerifyFailed(f"--public-key {value!r}: no such file, and not 64 hex digits", exit_code=EXIT_USAGE)


def pinned_agent_keys(path: str) -> dict[str, set[str]]:
    """--agent-keys FILE: the auditor's own {organisation: [64-hex Ed25519 keys]}."""
    try:
        data = bundle.load(path)
        return bundle.load_agent_keys(data)
    except manifest.BundleError as e:
        raise VerifyFailed(f"--agent-keys {path}: {e}", exit_code=EXIT_USAGE) from None


def verify_files(
    bundle_path: str,
    *,
    since: str | None = None,
    public_key: str | None = None,
    trust_bundle_key: bool = False,
    dataset: str | None = None,
    agent_keys: str | None = None,
    require_tickets: bool = False,
) -> Verdict:
    """Verify the bundle at `bundle_path`; return the report lines, or raise VerifyFailed.

    `require_tickets`: a chain whose COMMITs name tickets the bundle does not carry fails
    instead of warning. Older bundles carry none; the coordinator, who holds the key, can
    also export without them, so an auditor who expects them says so."""
    if public_key and trust_bundle_key:
        raise VerifyFailed("give either --public-key or --trust-bundle-key, not both", exit_code=EXIT_USAGE)
    pinned = pinned_key_id(public_key) if public_key else None
    pinned_agents = pinned_agent_keys(agent_keys) if agent_keys else None
    try:
        new = bundle.load(bundle_path)
        if pinned is None and not trust_bundle_key:
            shown = _bundle_fingerprint(new)
            raise VerifyFailed(
                "refusing to verify against the key inside the bundle"
                + (f" ({shown})" if shown else "")
                + ": pin the coordinator's key with --public-key KEY, or pass --trust-bundle-key",
                exit_code=EXIT_USAGE,
            )
        report = bundle.verify(new, pinned_key_id=pinned, datasets=[dataset] if dataset else None, agent_keys=pinned_agents)
        unchecked = [c for c in report.chains if c.tickets is None and c.ticketed_commits]
        if require_tickets and unchecked:
            raise VerifyFailed(
                "tickets required (--require-tickets): "
                + "; ".join(f"dataset {c.dataset}: {c.ticketed_commits} committed rounds name tickets the bundle does not carry" for c in unchecked)
            )
        verdict = Verdict(lines=report.lines(), warnings=report.warnings())
        verdict.lines[0] += " (pinned)" if pinned else " (trusted from the bundle, not pinned)"
        if pinned_agents is not None:
            verdict.lines.insert(1, f"agent keys pinned from {agent_keys}: {', '.join(sorted(pinned_agents))}")
        if since:
            old = bundle.load(since)
            bundle.verify(old, pinned_key_id=report.key_id)
            verdict.lines.extend(bundle.verify_consistency(old, new))
    except manifest.BundleError as e:
        raise VerifyFailed(f"bundle does not verify: {e}") from None
    return verdict


def _bundle_fingerprint(data: dict) -> str | None:
    try:
        _, kid = manifest.public_key_from(data.get("public_key"))
    except manifest.BundleError:
        return None
    return manifest.fingerprint(kid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accounting.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="The audit bundle (JSON) to verify.")
    parser.add_argument("--since", help="An older bundle the new one must extend.")
    parser.add_argument("--public-key", help="The coordinator's key to pin: a PEM file, or 64 hex digits (inline or in a file).")
    parser.add_argument("--trust-bundle-key", action="store_true", help="Verify against the key inside the bundle (no pinning).")
    parser.add_argument(
        "--agent-keys", help="JSON file {organisation: [hex keys]}: the partners' agent keys to check receipts against."
    )
    parser.add_argument("--dataset", help="Only this dataset's chain (slug).")
    parser.add_argument(
        "--require-tickets", action="store_true",
        help="Fail, instead of warning, when committed rounds name tickets the bundle does not carry.",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        verdict = verify_files(
            args.bundle,
            since=args.since,
            public_key=args.public_key,
            trust_bundle_key=args.trust_bundle_key,
            dataset=args.dataset,
            agent_keys=args.agent_keys,
            require_tickets=args.require_tickets,
        )
    except VerifyFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return e.exit_code
    for line in verdict.lines:
        print(line)
    for line in verdict.warnings:
        print(line, file=sys.stderr)
    print("bundle verifies" + (" and extends the old one" if args.since else ""))
    print(f"verified in {time.monotonic() - started:.2f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
