"""The round tickets and agreement terms of an audit bundle, checked offline
(docs/TRUST-FORMATS.md, "Tickets and terms in the bundle"; ARCHITECTURE.md, Trust 1 and 5).

Pure Python + numpy + dp-accounting + cryptography; no Django. `accounting.bundle` calls it
for every chain once the chain's entries replayed: for every COMMIT naming a ticket, the
ticket the coordinator signed for that round and dataset, and the terms the ticket names,
must be in the bundle, and must agree with the chain and with each other:

* the ticket hashes to the COMMIT's `ticket_hash` and carries the coordinator's signature
  under the pinned key (so it was neither edited nor re-signed by anyone else);
* it names the chain, its organisation, the round, the RESERVE entry (by hash), the RESERVE's
  event, delta and accountant, and its event is the event of its own q, z, K and evaluation;
* the terms of its (agreement_id, agreement_version) hash to its `terms_hash`, list the
  chain's organisation as a party, and the coordinator recorded that organisation's
  signature of that hash;
* its parameters are within those terms: z >= min_noise_multiplier, C <= max_clip_norm,
  delta <= max_delta, the round's epsilon (training and evaluation, at the RESERVE's delta)
  <= max_epsilon_per_round, and the day it was issued within valid_from..valid_until.

The ticket's signed format (fields, domain, hash) is `accounting.tickets`, the same module the
coordinator signs with and the partner's agent verifies with (federation/agent/trust.py).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import accountant as acc
from . import chain, dp_events, manifest
from . import receipts as receipts_mod
from .tickets import TICKET_FIELDS, dp_limit_problems, ticket_hash, ticket_message

AGREEMENT_FIELDS = {"agreement_id", "version", "terms", "signatures"}
SIGNATURE_FIELDS = {"organisation", "terms_hash", "signed_at"}
TERM_LIMITS = ("parties", "valid_from", "valid_until", "min_noise_multiplier", "max_clip_norm", "max_delta", "max_epsilon_per_round")
EPSILON_RTOL = 1e-9  # the same slack the partner's agent allows (federation/agent/checks.py)


sha256_hex = manifest.sha256_hex  # a terms hash (what the parties sign)


@dataclass(frozen=True)
class Terms:
    """One agreement version in the bundle: its terms document and hash, and the
    organisations the coordinator recorded as having signed that hash."""

    agreement_id: int
    version: int
    terms: Mapping[str, Any]
    terms_hash: str
    signed_by: frozenset[str]


def load_agreements(bundle: Mapping[str, Any]) -> dict[tuple[int, int], Terms] | None:
    """(agreement id, version) -> Terms, from the bundle's `agreements`; None when the bundle
    carries none (a bundle exported before tickets were: its tickets go unchecked, a warning)."""
    if "agreements" not in bundle:
        return None
    items = bundle["agreements"]
    if not isinstance(items, list):
        raise manifest.BundleError("agreements must be a list")
    out: dict[tuple[int, int], Terms] = {}
    for a in items:
        if not isinstance(a, Mapping) or set(a) != AGREEMENT_FIELDS:
            raise manifest.BundleError("an agreement must have exactly agreement_id, version, terms and signatures")
        pk, version, terms = a["agreement_id"], a["version"], a["terms"]
        where = f"agreement {pk!r} v{version!r}"
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (pk, version)):
            raise manifest.BundleError(f"{where}: agreement_id and version must be positive integers")
        if (pk, version) in out:
            raise manifest.BundleError(f"{where}: listed twice")
        if not isinstance(terms, Mapping) or any(name not in terms for name in TERM_LIMITS) or terms.get("version") != version:
            raise manifest.BundleError(f"{where}: the terms document lacks the signed limits or names another version")
        if not isinstance(terms["parties"], list) or not all(isinstance(p, str) for p in terms["parties"]):
            raise manifest.BundleError(f"{where}: the terms' parties must be a list of organisation slugs")
        digest = sha256_hex(terms)
        signatures = a["signatures"]
        if not isinstance(signatures, list):
            raise manifest.BundleError(f"{where}: signatures must be a list")
        signed_by = set()
        for s in signatures:
            if not isinstance(s, Mapping) or set(s) != SIGNATURE_FIELDS or not isinstance(s["organisation"], str):
                raise manifest.BundleError(f"{where}: a signature must have exactly organisation, terms_hash and signed_at")
            if s["terms_hash"] != digest:
                raise manifest.BundleError(
                    f"{where}: {s['organisation']}'s recorded signature names terms hash {str(s['terms_hash'])[:16]}..., "
                    f"the terms in the bundle hash to {digest[:16]}..."
                )
            signed_by.add(s["organisation"])
        out[(pk, version)] = Terms(pk, version, terms, digest, frozenset(signed_by))
    return out


def _checked_tickets(c: Mapping[str, Any], slug: str, key: Ed25519PublicKey, kid: str) -> dict[int, Mapping[str, Any]]:
    """round -> the chain's ticket for it: each well formed, signed by the coordinator's key,
    naming this chain and its organisation; one per round."""
    tickets = c["tickets"]
    if not isinstance(tickets, list):
        raise manifest.BundleError(f"dataset {slug}: tickets must be a list", dataset=slug)
    by_round: dict[int, Mapping[str, Any]] = {}
    for i, t in enumerate(tickets):
        where = f"dataset {slug}: ticket {i + 1}"
        if not isinstance(t, Mapping) or set(t) != TICKET_FIELDS | {"signature"}:
            raise manifest.BundleError(f"{where}: its fields differ from the ticket format", dataset=slug)
        rnd = t["round"]
        if isinstance(rnd, bool) or not isinstance(rnd, int):
            raise manifest.BundleError(f"{where}: round must be an integer", dataset=slug)
        where = f"dataset {slug}: the ticket of round {rnd}"
        if t["key_id"] != kid:
            raise manifest.BundleError(f"{where} names signing key {str(t['key_id'])[:16]}..., not the coordinator's", dataset=slug)
        sig = t["signature"]
        try:
            if not isinstance(sig, str) or len(sig) != 128 or not manifest.HEX.fullmatch(sig):
                raise ValueError(sig)
            key.verify(bytes.fromhex(sig), ticket_message(t))
        except (InvalidSignature, TypeError, ValueError):
            raise manifest.BundleError(
                f"{where}: the coordinator's signature does not verify (edited after signing, or signed by another key)",
                dataset=slug,
            ) from None
        if t["dataset"] != slug or t["organisation"] != c.get("organisation"):
            raise manifest.BundleError(
                f"{where} names dataset {t['dataset']!r} of organisation {t['organisation']!r}: another chain's ticket",
                dataset=slug,
            )
        if rnd in by_round:
            raise manifest.BundleError(f"{where}: a second ticket for the round", dataset=slug)
        by_round[rnd] = t
    return by_round


def check_tickets(
    c: Mapping[str, Any],
    slug: str,
    entries: list,
    charged: Mapping[int, Any],
    agreements: dict[tuple[int, int], Terms],
    *,
    key: Ed25519PublicKey,
    kid: str,
    signed: bool,
    orders: tuple[float, ...],
    pld_interval: float,
) -> int:
    """Check the chain's tickets against its COMMITs (`charged`: round -> a record with seq,
    ticket_hash, event, as accounting.bundle collects them) and the bundle's agreements;
    raise BundleError naming the entry. Returns the number of tickets checked."""
    if "tickets" not in c:
        raise manifest.BundleError(f"dataset {slug}: the bundle carries agreements but this chain no tickets", dataset=slug)
    if not signed:
        raise manifest.BundleError(
            f"dataset {slug}: the bundle has no coordinator-signed manifest: its tickets and agreements are not covered",
            dataset=slug,
        )
    by_round = _checked_tickets(c, slug, key, kid)
    for rnd in sorted(set(by_round) - set(charged)):
        raise manifest.BundleError(f"dataset {slug}: a ticket names round {rnd}, which the chain did not commit with a ticket", dataset=slug)
    reserves = {e["round"]: e for e in entries if e["kind"] == chain.RESERVE}
    for rnd, charge in sorted(charged.items(), key=lambda kv: kv[1].seq):
        at = f"dataset {slug}: entry #{charge.seq} (COMMIT of round {rnd})"
        ticket = by_round.get(rnd)
        if ticket is None:
            raise manifest.BundleError(f"{at}: no ticket in the bundle for the round", dataset=slug, seq=charge.seq)
        try:
            _check_one(ticket, charge, reserves[rnd], agreements, orders=orders, pld_interval=pld_interval)
        except ValueError as e:
            raise manifest.BundleError(f"{at}: {e}", dataset=slug, seq=charge.seq) from None
    return len(by_round)


def _check_one(ticket, charge, reserve, agreements, *, orders, pld_interval) -> None:
    """One COMMIT's ticket against the chain and its terms; ValueError says what is wrong."""
    digest = ticket_hash(ticket)
    if digest != charge.ticket_hash:
        raise ValueError(f"the round's ticket hashes to {digest[:16]}..., the COMMIT names {charge.ticket_hash[:16]}...")
    if ticket["reserve_entry_hash"] != reserve["entry_hash"]:
        raise ValueError(f"the ticket names RESERVE {str(ticket['reserve_entry_hash'])[:16]}..., not entry #{reserve['seq']}")
    if not receipts_mod.events_equal(ticket["event"], reserve["event"]) or not receipts_mod.events_equal(ticket["event"], charge.event):
        raise ValueError("the ticket's event differs from the event charged")
    if (ticket["delta"], ticket["accountant"]) != (reserve["delta"], reserve["accountant"]):
        raise ValueError(f"the ticket's delta and accountant {ticket['delta']!r}, {ticket['accountant']!r} differ from the RESERVE's")
    try:
        event = dp_events.dataset_round_event(
            {"q": ticket["q"], "z": ticket["z"], "K": ticket["K"],
             "eval_noise_multiplier": ticket["eval_noise"], "eval_count": ticket["eval_count"]}
        )  # fmt: skip
        if dp_events.event_key(ticket["event"]) != dp_events.canonical_json(event):
            raise ValueError("the ticket's event is not the event of its q, z, K and evaluation")
    except (dp_events.InvalidDpEvent, TypeError, KeyError) as e:
        raise ValueError(f"the ticket's DP parameters make no valid event: {e}") from None
    terms = agreements.get((ticket["agreement_id"], ticket["agreement_version"]))
    name = f"agreement {ticket['agreement_id']} v{ticket['agreement_version']}"
    if terms is None:
        raise ValueError(f"the terms of {name}, which the ticket names, are not in the bundle")
    if terms.terms_hash != ticket["terms_hash"]:
        raise ValueError(
            f"the terms of {name} in the bundle hash to {terms.terms_hash[:16]}..., the signed ticket names "
            f"{str(ticket['terms_hash'])[:16]}...: not the terms the round ran under"
        )
    org = ticket["organisation"]
    if org not in terms.terms["parties"]:
        raise ValueError(f"organisation {org} is not a party to {name}")
    if org not in terms.signed_by:
        raise ValueError(f"the coordinator recorded no signature of {name} by organisation {org}")
    problems = _outside_terms(ticket, terms.terms, event, orders=orders, pld_interval=pld_interval)
    if problems:
        raise ValueError(f"the round's parameters are outside the signed terms of {name}: " + "; ".join(problems))


@functools.lru_cache(maxsize=1024)
def _round_epsilon(event_key: str, delta: float, accountant: str, orders: tuple[float, ...], pld_interval: float) -> float:
    """A round's epsilon at its delta; memoised, since a plan's rounds repeat a few events."""
    return acc.compose_epsilon(
        [event_key], delta, accountant, value_discretization_interval=pld_interval, orders=orders
    )  # fmt: skip


def _outside_terms(ticket, terms, event, *, orders, pld_interval) -> list[str]:
    problems = []
    try:
        problems += dp_limit_problems(ticket, terms)
        eps = _round_epsilon(dp_events.canonical_json(event), ticket["delta"], ticket["accountant"], orders, pld_interval)
        if eps > terms["max_epsilon_per_round"] * (1 + EPSILON_RTOL):
            problems.append(f"one round costs epsilon {eps:.6g} > ceiling {terms['max_epsilon_per_round']}")
        issued = datetime.fromisoformat(ticket["issued_at"]).date()
        if not date.fromisoformat(terms["valid_from"]) <= issued <= date.fromisoformat(terms["valid_until"]):
            problems.append(f"issued on {issued}, outside {terms['valid_from']}..{terms['valid_until']}")
    except (TypeError, ValueError) as e:
        problems.append(f"the ticket or the terms cannot be compared: {e}")
    return problems
