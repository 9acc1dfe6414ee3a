"""Audit bundles: verify offline, without the database (ARCHITECTURE.md, Ledger 4 and 5).

Pure Python + numpy + dp-accounting + cryptography; no Django. An auditor can run it with
`python manage.py verify_ledger --bundle FILE [--since OLD]` or import it directly.

A bundle is one JSON object:

    {"format": "fedgov.audit-bundle.v1",
     "exported_at": ISO-8601,
     "public_key": {"algorithm": "Ed25519", "hex": ..., "pem": ..., "key_id": sha256(raw key)},
     "accountant": {"rdp_orders": [...], "pld_value_discretization_interval": ..., ...},
     "agents": [{"organisation": SLUG, "public_key": HEX, "enrolled_at": ISO}, ...],
     "chains": [{"dataset": SLUG, "organisation": SLUG, "entries": [...], "signed_heads": [...],
                 "receipts": [...], "tickets": [...]}],
     "agreements": [{"agreement_id", "version", "terms", "signatures"}],
     "manifest": {"type": MANIFEST_TYPE, "key_id", "exported_at", "agents": [...],
                  "chains": [{"dataset", "organisation", "head_seq", "head_hash"}],
                  "digests": {"agreements", "tickets"}, "signature"}}

The tickets and the terms they name are checked by `accounting.terms_check`.

The manifest is what the coordinator signs at export (with the ledger key, writing nothing):
the agent keys receipts are checked against and which organisation each chain belongs to,
neither of which the chains' signed heads cover. A bundle whose receipts are checked must
carry it (the README, "Partners need not trust the coordinator").

Verification of each chain: every entry through `chain.ChainVerifier` (hash links, formats,
two-phase semantics, recomputed epsilon), every signed head's Ed25519 signature, each head
matching the entry hash at its seq, and the last entry covered by a signed head (otherwise
trailing entries could be altered and re-hashed undetected).

Consistency (`verify_consistency(old, new)`), as in Certificate Transparency: the new bundle
has the same key, every chain of the old one, and for each the very same entries up to the
old bundle's last signed head. History is never rewritten, only extended.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import accountant as acc
from . import chain, dp_events, manifest, terms_check
from . import receipts as receipts_mod

BUNDLE_FORMAT = "fedgov.audit-bundle.v1"


@dataclass
class ChainSummary:
    dataset: str
    entries: int
    head_seq: int
    head_hash: str
    epsilon_budget: float
    epsilon_spent: float
    open_reservations: list[int] = field(default_factory=list)
    receipts: int = 0
    legacy_commits: list[int] = field(default_factory=list)  # seqs of COMMITs reserved before tickets
    tickets: int | None = None  # tickets checked against their terms; None: the bundle carries none
    ticketed_commits: int = 0


@dataclass
class BundleReport:
    key_id: str
    chains: list[ChainSummary]

    @property
    def fingerprint(self) -> str:
        return manifest.fingerprint(self.key_id)

    def lines(self) -> list[str]:
        out = [f"coordinator key {self.fingerprint} ({self.key_id})"]
        for c in self.chains:
            out.append(
                f"{c.dataset}: {c.entries} entries, head #{c.head_seq} {c.head_hash[:16]}..., "
                f"epsilon spent {c.epsilon_spent:.6g} of {c.epsilon_budget:.6g}, {c.receipts} receipts verified"
                + (f", {c.tickets} tickets checked against their signed terms" if c.tickets is not None else "")
                + (f", open reservations: rounds {c.open_reservations}" if c.open_reservations else "")
            )
        return out

    def warnings(self) -> list[str]:
        out = []
        for c in self.chains:
            if c.legacy_commits:
                shown = ", ".join(f"#{s}" for s in c.legacy_commits[:10]) + (" ..." if len(c.legacy_commits) > 10 else "")
                out.append(
                    f"warning: {c.dataset}: {len(c.legacy_commits)} committed rounds unreceipted (legacy, reserved "
                    f"before tickets): entries {shown}"
                )
            if c.tickets is None and c.ticketed_commits:
                out.append(
                    f"warning: {c.dataset}: no tickets in bundle (exported before they were): {c.ticketed_commits} committed "
                    "rounds' tickets, terms and DP parameters unchecked"
                )
        return out


def load(path: str) -> dict:
    """Read a bundle file, refusing NaN/Infinity and duplicate keys."""

    def refuse_constant(name: str) -> Any:
        raise manifest.BundleError(f"{path}: {name} is not allowed in a bundle")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise manifest.BundleError(f"{path}: duplicate key {k!r}")
            out[k] = v
        return out

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=refuse_constant, object_pairs_hook=no_duplicates)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise manifest.BundleError(f"{path}: cannot read the bundle: {e}") from None
    if not isinstance(data, dict):
        raise manifest.BundleError(f"{path}: a bundle is a JSON object")
    return data


def _accountant_settings(bundle: Mapping[str, Any]) -> tuple[tuple[float, ...], float]:
    params = bundle.get("accountant")
    if not isinstance(params, Mapping):
        raise manifest.BundleError("the bundle lacks its accountant parameters")
    try:
        orders = acc._orders_tuple(params.get("rdp_orders"))  # noqa: SLF001
    except (TypeError, ValueError) as e:
        raise manifest.BundleError(f"accountant.rdp_orders: {e}") from None
    interval = params.get("pld_value_discretization_interval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 1:
        raise manifest.BundleError("accountant.pld_value_discretization_interval must be in (0, 1]")
    return orders, float(interval)


BUNDLE_KEYS = {"format", "exported_at", "public_key", "accountant", "agents", "chains", "manifest", "agreements"}
CHAIN_KEYS = {"dataset", "entries", "signed_heads"}
CHAIN_OPTIONAL_KEYS = {"organisation", "receipts", "tickets"}
AGENT_FIELDS = {"organisation", "public_key", "enrolled_at"}


def _agents(bundle: Mapping[str, Any]) -> dict[str, set[str]]:
    """organisation slug -> its enrolled agent keys (hex), from the bundle's `agents`."""
    agents = bundle.get("agents", [])
    if not isinstance(agents, list):
        raise manifest.BundleError("agents must be a list")
    out: dict[str, set[str]] = {}
    for a in agents:
        if not isinstance(a, Mapping) or set(a) != AGENT_FIELDS:
            raise manifest.BundleError("an agent must have exactly organisation, public_key and enrolled_at")
        key = a["public_key"]
        if (
            not isinstance(a["organisation"], str)
            or not isinstance(key, str)
            or len(key) != 64
            or not manifest.HEX.fullmatch(key)
        ):
            raise manifest.BundleError(f"agent of {a['organisation']!r}: public_key must be 64 lowercase hex digits")
        if not isinstance(a["enrolled_at"], str):
            raise manifest.BundleError(f"agent of {a['organisation']!r}: enrolled_at must be an ISO-8601 timestamp")
        out.setdefault(a["organisation"], set()).add(key)
    return out


def load_agent_keys(data: Any) -> dict[str, set[str]]:
    """An auditor's own pins: {organisation slug: [64-hex Ed25519 agent keys]}."""
    if not isinstance(data, Mapping) or not data:
        raise manifest.BundleError("agent keys must be a JSON object {organisation: [hex keys]}")
    out: dict[str, set[str]] = {}
    for org, keys in data.items():
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) == 64 and manifest.HEX.fullmatch(k) for k in keys):
            raise manifest.BundleError(f"agent keys of {org!r} must be a list of 64 lowercase hex digits")
        out[org] = set(keys)
    return out


@dataclass
class _Charged:
    """A COMMIT naming a ticket: what the partner's receipt must match."""

    seq: int
    ticket_hash: str
    event: Any
    receipted: bool = False


def _replay(verifier: chain.ChainVerifier, entries: list, slug: str) -> tuple[chain.ChainState, dict[int, _Charged], list[int]]:
    """Feed the chain; collect its COMMITs with tickets (round -> charge) and legacy COMMITs.

    Once a COMMIT of the chain names a ticket, every later COMMIT must: a chain cannot fall
    back to the receipt-less legacy form (docs/TRUST-FORMATS.md)."""
    charged: dict[int, _Charged] = {}
    legacy: list[int] = []
    ticketed_since: int | None = None
    for entry in entries:
        verifier.feed(entry)  # raises ChainError on the first bad entry
        if entry["kind"] != chain.COMMIT:
            continue
        seq, rnd = entry["seq"], entry["round"]
        ticket = entry["payload"].get("ticket_hash")
        if ticket is None:
            if ticketed_since is not None:
                raise chain.ChainError(
                    slug,
                    seq,
                    f"COMMIT of round {rnd} names no ticket_hash, but the chain's COMMITs name tickets since entry "
                    f"#{ticketed_since}: its receipt cannot be checked",
                )
            legacy.append(seq)
            continue
        if not isinstance(ticket, str) or len(ticket) != 64 or not manifest.HEX.fullmatch(ticket):
            raise chain.ChainError(slug, seq, "payload.ticket_hash is not 64 lowercase hex digits")
        if ticketed_since is None:
            ticketed_since = seq
        charged[rnd] = _Charged(seq=seq, ticket_hash=ticket, event=entry["event"])
    return verifier.state, charged, legacy


def _check_receipts(
    c: Mapping[str, Any], slug: str, charged: dict[int, _Charged], agents: dict[str, set[str]], *, signed: bool, pinned: bool
) -> int:
    """Every COMMIT naming a ticket has exactly one receipt, signed by a key enrolled for the
    chain's organisation (or pinned by the auditor), naming that round, dataset, ticket and
    the charged event. `signed`: the coordinator's manifest covers the agents and the chain's
    organisation; without it they could have been swapped, so no receipt is trusted."""
    receipts = c.get("receipts", [])
    if not isinstance(receipts, list):
        raise manifest.BundleError(f"dataset {slug}: receipts must be a list", dataset=slug)
    if not charged and not receipts:
        return 0
    organisation = c.get("organisation")
    if not isinstance(organisation, str) or not organisation:
        raise manifest.BundleError(f"dataset {slug}: the chain names no organisation to check its receipts against", dataset=slug)
    if not signed:
        raise manifest.BundleError(
            f"dataset {slug}: the bundle has no coordinator-signed manifest: its agent keys and organisations are "
            "unauthenticated, so its receipts cannot be checked",
            dataset=slug,
        )
    if pinned and organisation not in agents:
        raise manifest.BundleError(
            f"dataset {slug}: organisation {organisation} has no agent keys pinned (--agent-keys)", dataset=slug
        )
    keys = agents.get(organisation, set())
    enrolled = "pinned (--agent-keys)" if pinned else "enrolled"
    for i, r in enumerate(receipts):
        where = f"dataset {slug}: receipt {i + 1}"
        try:
            receipts_mod.check_format(r)
        except receipts_mod.ReceiptFormatError as e:
            raise manifest.BundleError(f"{where}: {e}", dataset=slug) from None
        rnd = r["round"]
        charge = charged.get(rnd)
        if charge is None:
            raise manifest.BundleError(f"{where}: names round {rnd}, which the chain did not commit with a ticket", dataset=slug)
        at = f"dataset {slug}: entry #{charge.seq} (COMMIT of round {rnd})"
        if charge.receipted:
            raise manifest.BundleError(f"{at}: a second receipt for the round", dataset=slug, seq=charge.seq)
        if r["dataset"] != slug:
            raise manifest.BundleError(f"{at}: the receipt names dataset {r['dataset']!r}", dataset=slug, seq=charge.seq)
        if r["agent_public_key"] not in keys:
            raise manifest.BundleError(
                f"{at}: the receipt is signed by key {r['agent_public_key'][:16]}..., not one {enrolled} for organisation "
                f"{organisation}",
                dataset=slug,
                seq=charge.seq,
            )
        try:
            receipts_mod.verify_signature(r, r["agent_public_key"])
        except receipts_mod.ReceiptFormatError as e:
            raise manifest.BundleError(f"{at}: forged receipt: {e}", dataset=slug, seq=charge.seq) from None
        if r["ticket_hash"] != charge.ticket_hash:
            raise manifest.BundleError(
                f"{at}: the receipt names ticket {r['ticket_hash'][:16]}..., the ledger committed {charge.ticket_hash[:16]}...",
                dataset=slug,
                seq=charge.seq,
            )
        if not receipts_mod.events_equal(r["event"], charge.event):
            raise manifest.BundleError(
                f"{at}: the event the partner ran differs from the event charged", dataset=slug, seq=charge.seq
            )
        charge.receipted = True
    for rnd, charge in charged.items():
        if not charge.receipted:
            raise manifest.BundleError(
                f"dataset {slug}: entry #{charge.seq} (COMMIT of round {rnd}): no receipt from organisation "
                f"{organisation}'s agent (charged, unreceipted)",
                dataset=slug,
                seq=charge.seq,
            )
    return len(receipts)


def verify(
    bundle: Mapping[str, Any],
    *,
    pinned_key_id: str | None = None,
    datasets: list[str] | None = None,
    agent_keys: Mapping[str, set[str]] | None = None,
) -> BundleReport:
    """Verify a parsed bundle (only the chains named in `datasets`, if given); raise
    BundleError naming the first problem. Pinning the key is the caller's choice here;
    accounting/verify.py, the auditor's command, insists on it. `agent_keys` (organisation
    -> hex keys, see load_agent_keys) replaces the bundle's agents as the keys receipts must
    be signed by: the auditor's own pins, so not even the coordinator can swap them."""
    if bundle.get("format") != BUNDLE_FORMAT:
        raise manifest.BundleError(f"unknown bundle format {bundle.get('format')!r}")
    unknown = set(bundle) - BUNDLE_KEYS
    if unknown:  # e.g. a renamed "manifest": nothing in a bundle goes unread
        raise manifest.BundleError(f"unknown bundle keys {sorted(map(str, unknown))}")
    key, kid = manifest.public_key_from(bundle.get("public_key"))
    if pinned_key_id is not None and kid != pinned_key_id:
        raise manifest.BundleError(
            f"the bundle is signed by key {manifest.fingerprint(kid)}, not the pinned {manifest.fingerprint(pinned_key_id)}"
        )
    orders, interval = _accountant_settings(bundle)
    agents = _agents(bundle)
    chains = bundle.get("chains")
    if not isinstance(chains, list):
        raise manifest.BundleError("chains must be a list")
    if not chains:
        raise manifest.BundleError("the bundle holds no chains: there is nothing to verify")
    signed_lines = manifest.check_manifest(bundle, key, kid)
    agreements = terms_check.load_agreements(bundle)
    if agent_keys is not None:
        agents = {org: set(keys) for org, keys in agent_keys.items()}
    seen: set[str] = set()
    summaries = []
    for c in chains:
        if not isinstance(c, Mapping) or not CHAIN_KEYS <= set(c) <= CHAIN_KEYS | CHAIN_OPTIONAL_KEYS:
            raise manifest.BundleError(
                "a chain must have dataset, entries and signed_heads (and may have organisation, receipts, tickets)"
            )
        slug = c["dataset"]
        if not isinstance(slug, str) or slug in seen:
            raise manifest.BundleError(f"chain {slug!r} is malformed or repeated")
        seen.add(slug)
        if datasets is not None and slug not in datasets:
            continue
        entries, heads = c["entries"], c["signed_heads"]
        if not isinstance(entries, list) or not isinstance(heads, list):
            raise manifest.BundleError(f"dataset {slug}: entries and signed_heads must be lists", dataset=slug)
        verifier = chain.ChainVerifier(slug, orders=orders, pld_interval=interval)
        try:
            state, charged, legacy = _replay(verifier, entries, slug)
        except chain.ChainError as e:
            raise manifest.BundleError(str(e), dataset=slug, seq=e.seq) from None
        if not heads:
            if entries:
                raise manifest.BundleError(f"dataset {slug}: no signed head covers the chain", dataset=slug)
        last_seq = 0
        for head in heads:
            manifest.verify_head(head, key, kid, dataset=slug)
            seq = head["seq"]
            if seq <= last_seq:
                raise manifest.BundleError(f"dataset {slug}: signed heads are not in increasing order", dataset=slug, seq=seq)
            last_seq = seq
            if seq > len(entries) or entries[seq - 1]["entry_hash"] != head["head_hash"]:
                raise manifest.BundleError(
                    f"dataset {slug}: signed head #{seq} does not match entry #{seq}'s hash", dataset=slug, seq=seq
                )
        if last_seq != state.seq:
            raise manifest.BundleError(
                f"dataset {slug}: entries #{last_seq + 1}..#{state.seq} are not covered by a signed head",
                dataset=slug,
                seq=last_seq + 1,
            )
        if signed_lines is not None and (signed_lines[slug]["head_seq"], signed_lines[slug]["head_hash"]) != (
            state.seq,
            state.head_hash,
        ):
            raise manifest.BundleError(
                f"dataset {slug}: the chain ends at entry #{state.seq} ({state.head_hash[:16]}...), the coordinator's signed "
                f"manifest at #{signed_lines[slug]['head_seq']} ({str(signed_lines[slug]['head_hash'])[:16]}...)",
                dataset=slug,
                seq=state.seq,
            )
        n_receipts = _check_receipts(c, slug, charged, agents, signed=signed_lines is not None, pinned=agent_keys is not None)
        n_tickets = None
        if agreements is not None:
            n_tickets = terms_check.check_tickets(
                c, slug, entries, charged, agreements,
                key=key, kid=kid, signed=signed_lines is not None, orders=orders, pld_interval=interval,
            )  # fmt: skip
        elif "tickets" in c:
            raise manifest.BundleError(f"dataset {slug}: the chain carries tickets but the bundle no agreements", dataset=slug)
        summaries.append(
            ChainSummary(
                dataset=slug,
                entries=state.seq,
                head_seq=state.seq,
                head_hash=state.head_hash,
                epsilon_budget=state.epsilon_budget,
                epsilon_spent=state.epsilon_spent,
                open_reservations=sorted(state.open_rounds),
                receipts=n_receipts,
                legacy_commits=legacy,
                tickets=n_tickets,
                ticketed_commits=len(charged),
            )
        )
    if datasets is not None and not summaries:
        raise manifest.BundleError(f"no chain of the bundle is named {', '.join(datasets)}")
    return BundleReport(key_id=kid, chains=summaries)


def verify_consistency(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Check that `new` extends `old` (both already verified). Returns one line per chain."""
    _, old_kid = manifest.public_key_from(old.get("public_key"))
    _, new_kid = manifest.public_key_from(new.get("public_key"))
    if old_kid != new_kid:
        raise manifest.BundleError(f"the signing key changed from {old_kid[:16]}... to {new_kid[:16]}...")
    new_chains = {c["dataset"]: c for c in new["chains"]}
    lines = []
    for old_chain in old["chains"]:
        slug = old_chain["dataset"]
        if not old_chain["signed_heads"]:
            continue
        old_head = old_chain["signed_heads"][-1]
        n = old_head["seq"]
        new_chain = new_chains.get(slug)
        if new_chain is None:
            raise manifest.BundleError(f"dataset {slug}: present in the old bundle, missing from the new one", dataset=slug)
        new_entries = new_chain["entries"]
        if len(new_entries) < n:
            raise manifest.BundleError(
                f"dataset {slug}: the new bundle has {len(new_entries)} entries, fewer than the old signed head #{n}",
                dataset=slug,
                seq=len(new_entries) + 1,
            )
        for i in range(n):
            if dp_events.canonical_json(new_entries[i]) != dp_events.canonical_json(old_chain["entries"][i]):
                raise manifest.BundleError(
                    f"dataset {slug}: entry #{i + 1} differs from the old bundle: history was rewritten",
                    dataset=slug,
                    seq=i + 1,
                )
        if new_entries[n - 1]["entry_hash"] != old_head["head_hash"]:
            raise manifest.BundleError(f"dataset {slug}: entry #{n} does not match the old signed head", dataset=slug, seq=n)
        lines.append(f"{slug}: extends the old head #{n} by {len(new_entries) - n} entries")
    return lines
