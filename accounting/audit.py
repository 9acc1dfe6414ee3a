"""Verifying the ledger's chains and exporting them as a signed audit bundle.

Verification streams a chain from the database (`.iterator(chunk_size=...)`) through the same
`chain.ChainVerifier` an auditor runs on a bundle, then compares the DatasetBudget row (the
cached head and composition the budget checks rely on) with what the replay produced.
Exporting writes the bundle format of `accounting.bundle` (docs/TRUST-FORMATS.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from django.utils import timezone

from . import accountant as acc
from . import bundle as bundle_mod
from . import chain, dp_events, manifest
from .heads import key_id, public_key_block, signing_key
from .ledger import VERIFY_CHUNK_SIZE
from .models import DatasetBudget, LedgerEntry, Receipt, SignedHead, iso

# --- verification -----------------------------------------------------------------------------


@dataclass
class VerifyResult:
    dataset: str
    ok: bool
    entries: int = 0
    signed_heads: int = 0
    epsilon_spent: float = 0.0
    epsilon_budget: float = 0.0
    open_reservations: list[int] | None = None
    error: chain.ChainError | None = None

    @property
    def bad_seq(self) -> int | None:
        return self.error.seq if self.error else None

    def line(self) -> str:
        if self.ok:
            return (
                f"OK {self.dataset}: {self.entries} entries, {self.signed_heads} signed heads, "
                f"epsilon spent {self.epsilon_spent:.6g} of {self.epsilon_budget:.6g}"
                + (f", open reservations: rounds {self.open_reservations}" if self.open_reservations else "")
            )
        return f"FAILED {self.error}"


def _head_public_key():
    return signing_key().public_key(), key_id()


def verify_dataset(dataset, *, chunk_size: int = VERIFY_CHUNK_SIZE) -> VerifyResult:
    """Replay the dataset's chain from the database; the first bad entry and why, if any."""
    budget = DatasetBudget.objects.filter(dataset_id=dataset.pk).first()
    first = LedgerEntry.objects.filter(dataset_id=dataset.pk).order_by("seq").values_list("dataset_slug", flat=True).first()
    slug = first or dataset.slug
    verifier = chain.ChainVerifier(slug)
    heads: dict[int, list[SignedHead]] = {}
    for head in SignedHead.objects.filter(dataset_id=dataset.pk).order_by("seq"):
        heads.setdefault(head.seq, []).append(head)
    public_key, kid = _head_public_key() if heads else (None, None)
    n_heads = 0
    try:
        for entry in _stream(dataset.pk, chunk_size):
            doc = entry.document()
            verifier.feed(doc)
            for head in heads.pop(doc["seq"], []):
                _check_head(head, doc, slug, public_key, kid)
                n_heads += 1
        state = verifier.state
        if heads:
            seq = min(heads)
            raise chain.ChainError(slug, seq, f"a signed head names entry #{seq}, which does not exist")
        _check_budget_row(budget, state, slug)
    except chain.ChainError as e:
        return VerifyResult(dataset=slug, ok=False, entries=verifier.state.seq, error=e)
    return VerifyResult(
        dataset=slug,
        ok=True,
        entries=state.seq,
        signed_heads=n_heads,
        epsilon_spent=state.epsilon_spent,
        epsilon_budget=state.epsilon_budget,
        open_reservations=sorted(state.open_rounds),
    )


def _stream(dataset_id: int, chunk_size: int) -> Iterator[LedgerEntry]:
    qs = LedgerEntry.objects.filter(dataset_id=dataset_id).order_by("seq")
    return qs.iterator(chunk_size=chunk_size)


def _check_head(head: SignedHead, doc: dict, slug: str, public_key, kid: str) -> None:
    seq = doc["seq"]
    if head.key_id != kid:
        raise chain.ChainError(
            slug, seq, f"head #{seq} is signed by key {head.key_id[:16]}..., not the coordinator's current key"
        )
    if head.head_hash != doc["entry_hash"] or head.dataset_slug != slug:
        raise chain.ChainError(slug, seq, f"signed head #{seq} does not match the entry's hash")
    document = head.document()
    try:
        manifest.verify_head(document, public_key, kid, dataset=slug)
    except manifest.BundleError as e:
        raise chain.ChainError(slug, seq, str(e)) from None


def _check_budget_row(budget: DatasetBudget | None, state: chain.ChainState, slug: str) -> None:
    """The cached head and composition must be what the chain replays to."""
    if budget is None:
        if state.seq:
            raise chain.ChainError(slug, None, "entries exist but the dataset has no budget row")
        return
    problems = []
    if budget.entry_count != state.seq:
        problems.append(f"entry_count {budget.entry_count} != {state.seq}")
    if budget.head_hash != state.head_hash:
        problems.append(f"head_hash {budget.head_hash[:12]}... != {state.head_hash[:12]}...")
    if state.seq and not chain.epsilon_matches(budget.epsilon_spent, state.epsilon_spent, state.accountant):
        problems.append(f"epsilon_spent {budget.epsilon_spent!r} != recomputed {state.epsilon_spent!r}")
    if state.seq and budget.epsilon_budget != state.epsilon_budget:
        problems.append(f"epsilon_budget {budget.epsilon_budget!r} != last GRANT {state.epsilon_budget!r}")
    try:
        cum = acc.rdp_from_json(budget.cum_rdp)
    except ValueError as e:
        problems.append(f"cum_rdp unreadable: {e}")
    else:
        same_inf = np.array_equal(np.isinf(cum), np.isinf(state.cum))
        finite = ~np.isinf(state.cum)
        if not same_inf or not np.allclose(cum[finite], state.cum[finite], rtol=chain.RDP_RTOL, atol=chain.ABS_TOL):
            problems.append("cum_rdp differs from the sum of the live events' RDP vectors")
    if problems:
        raise chain.ChainError(slug, None, "the stored budget state differs from the chain: " + "; ".join(problems))


def verify_all(*, datasets=None, chunk_size: int = VERIFY_CHUNK_SIZE) -> list[VerifyResult]:
    from federation.models import Dataset

    if datasets is None:
        ids = set(LedgerEntry.objects.values_list("dataset_id", flat=True).distinct())
        ids |= set(DatasetBudget.objects.values_list("dataset_id", flat=True))
        datasets = Dataset.objects.filter(pk__in=ids).order_by("id")
    return [verify_dataset(d, chunk_size=chunk_size) for d in datasets]


# --- export -----------------------------------------------------------------------------------


def enrolled_agents(*, organisation_ids=None) -> list[dict]:
    """Every agent identity key ever enrolled (revoked ones too: receipts they signed before
    the revocation stay verifiable), of the given organisations or all, as bundles list them
    (docs/TRUST-FORMATS.md)."""
    from federation.models import AgentIdentity

    rows = AgentIdentity.objects.select_related("organisation").order_by("organisation__slug", "enrolled_at", "pk")
    if organisation_ids is not None:
        rows = rows.filter(organisation_id__in=list(organisation_ids))
    return [{"organisation": a.organisation.slug, "public_key": a.public_key, "enrolled_at": iso(a.enrolled_at)} for a in rows]


TICKET_BATCH = 500


def signed_tickets(hashes: list[str]) -> list[dict]:
    """The signed tickets (document + signature) the ledger's COMMITs name, in their order. A
    hash with no stored ticket is left out: the bundle's verifier then fails on that COMMIT."""
    from federation.models import RoundTicket

    found: dict[str, dict] = {}
    for i in range(0, len(hashes), TICKET_BATCH):
        rows = RoundTicket.objects.filter(ticket_hash__in=hashes[i : i + TICKET_BATCH]).values_list("ticket_hash", "document", "signature")
        found.update({h: {**document, "signature": signature} for h, document, signature in rows})
    return [found[h] for h in hashes if h in found]


def agreement_versions(named: set[tuple[int, int, str]]) -> list[dict]:
    """The terms of each (agreement id, version, terms hash) tickets name, with the signatures
    the coordinator recorded for that version (docs/TRUST-FORMATS.md).

    An agreement's row holds only its current version; earlier versions' terms are recovered
    from its governance events, which record them whole when they are frozen for signature
    (agreement_submit: `terms`) and when amended (agreement_amend: `before` and `after`). The
    document chosen is the one hashing to the hash the ticket names; if none does (the
    coordinator's rows drifted), the one recorded for that version, so that the verifier
    reports the mismatch; if the version's terms were never recorded, the version is left out
    and the verifier fails on the tickets naming it."""
    from federation.models import Agreement, AgreementSignature, GovernanceEvent

    out = []
    for pk, version, terms_hash in sorted(named):
        agreement = Agreement.objects.filter(pk=pk).first()
        if agreement is None:
            continue
        candidates = [agreement.terms()] if agreement.version == version else []
        events = GovernanceEvent.objects.filter(
            agreement_id=pk, kind__in=[GovernanceEvent.Kind.AGREEMENT_SUBMITTED, GovernanceEvent.Kind.AGREEMENT_AMENDED]
        ).order_by("-created_at", "-id")
        for event in events:
            candidates += [event.details.get(k) for k in ("terms", "after", "before") if isinstance(event.details.get(k), dict)]
        candidates = [t for t in candidates if t.get("version") == version]
        if not candidates:
            continue
        terms = next((t for t in candidates if manifest.sha256_hex(t) == terms_hash), candidates[0])
        signatures = AgreementSignature.objects.filter(agreement_id=pk, version=version).order_by("signed_at", "pk")
        out.append(
            {
                "agreement_id": pk,
                "version": version,
                "terms": terms,
                "signatures": [
                    {"organisation": slug, "terms_hash": h, "signed_at": iso(at)}
                    for slug, h, at in signatures.values_list("organisation__slug", "terms_hash", "signed_at")
                ],
            }
        )
    return out


def export_bundle(out, *, datasets=None, agents: list[dict] | None = None, chunk_size: int = VERIFY_CHUNK_SIZE) -> dict:
    """Write a signed audit bundle to the text stream `out`; returns a summary.

    Exporting only reads: each chain is exported up to its latest head signed with the
    current key (heads are signed after each append and by the beat sweep, never by an
    export, so downloading a bundle writes nothing). Appends racing the export, or a head
    not signed yet, are left for the next one; a chain with no signed head is listed in
    `summary["unsigned"]` and left out. Entries are streamed, not held in memory.
    Each chain carries its dataset's organisation and the receipts and signed tickets of its
    rounds committed with a ticket up to that head; `agents` (default: the enrolled agents of
    the chains' organisations) lists the keys receipts are checked against; `agreements` the
    terms those tickets name (agreement_versions). The manifest signs digests of both.
    """
    from federation.models import Dataset

    if datasets is None:
        ids = DatasetBudget.objects.filter(entry_count__gt=0).values_list("dataset_id", flat=True)
        datasets = Dataset.objects.filter(pk__in=list(ids)).order_by("id")
    datasets = list(datasets)
    if agents is None:  # the keys of the exported chains' organisations only
        agents = enrolled_agents(organisation_ids={d.organisation_id for d in datasets})
    kid = key_id()
    exported_at = iso(timezone.now())
    header = {
        "format": bundle_mod.BUNDLE_FORMAT,
        "exported_at": exported_at,
        "public_key": public_key_block(),
        "accountant": acc.accountant_parameters(),
        "agents": agents,
    }
    head_text = json.dumps(header, sort_keys=True, indent=1)
    out.write(head_text[: head_text.rstrip().rfind("}")].rstrip() + ',\n "chains": [')
    summary = {"key_id": kid, "chains": {}, "unsigned": []}
    manifest_chains: list[dict] = []  # what the signed heads do not cover: see the manifest below
    ticket_digests: dict[str, str] = {}
    named_terms: set[tuple[int, int, str]] = set()  # (agreement id, version, terms hash) of the tickets
    first_chain = True
    for dataset in datasets:
        head = SignedHead.objects.filter(dataset_id=dataset.pk, key_id=kid).order_by("-seq").first()
        if head is None:
            if LedgerEntry.objects.filter(dataset_id=dataset.pk).exists():
                summary["unsigned"].append(dataset.slug)
            continue
        organisation = Dataset.objects.filter(pk=dataset.pk).values_list("organisation__slug", flat=True).first()
        out.write(
            ("" if first_chain else ",")
            + "\n  {"
            + f'"dataset": {json.dumps(head.dataset_slug)}, "organisation": {json.dumps(organisation)}, "entries": ['
        )
        first_chain = False
        qs = LedgerEntry.objects.filter(dataset_id=dataset.pk, seq__lte=head.seq).order_by("seq")
        ticketed: set[int] = set()  # rounds committed with a ticket: their receipts and tickets go in
        ticket_hashes: list[str] = []
        for i, entry in enumerate(qs.iterator(chunk_size=chunk_size)):
            doc = entry.document()
            if doc["kind"] == chain.COMMIT and "ticket_hash" in doc["payload"]:
                ticketed.add(doc["round"])
                ticket_hashes.append(doc["payload"]["ticket_hash"])
            out.write(("\n   " if i == 0 else ",\n   ") + dp_events.canonical_json(doc))
        heads = SignedHead.objects.filter(dataset_id=dataset.pk, seq__lte=head.seq, key_id=kid).order_by("seq")
        out.write('\n  ], "signed_heads": [')
        for i, h in enumerate(heads):
            out.write(("\n   " if i == 0 else ",\n   ") + dp_events.canonical_json(h.document()))
        out.write('\n  ], "receipts": [')
        first_receipt = True
        for round_id, body in (
            Receipt.objects.filter(dataset_id=dataset.pk).order_by("seq").values_list("round_id", "body").iterator(chunk_size)
        ):
            if round_id in ticketed:
                out.write(("\n   " if first_receipt else ",\n   ") + body)
                first_receipt = False
        tickets = signed_tickets(ticket_hashes)
        out.write('\n  ], "tickets": [')
        out.write(",".join("\n   " + dp_events.canonical_json(t) for t in tickets))
        out.write("\n  ]}")
        ticket_digests[head.dataset_slug] = manifest.sha256_hex(tickets)
        named_terms |= {(t["agreement_id"], t["agreement_version"], t["terms_hash"]) for t in tickets}
        summary["chains"][head.dataset_slug] = head.seq
        manifest_chains.append(
            {"dataset": head.dataset_slug, "organisation": organisation, "head_seq": head.seq, "head_hash": head.head_hash}
        )
    # The coordinator signs the agents and each chain's organisation and head (the README, "Partners need not trust the coordinator",
    # the bundle): an export signature, not a ledger head, so exporting still writes nothing.
    # The tickets and the terms they name are covered too (digests), so none can be swapped
    # or dropped without breaking the coordinator's own signature.
    agreements = agreement_versions(named_terms)
    digests = {"agreements": manifest.sha256_hex(agreements), "tickets": ticket_digests}
    signed_manifest = manifest.sign_manifest(
        private_key=signing_key(), key_id=kid, exported_at=exported_at, agents=agents, chains=manifest_chains, digests=digests
    )
    out.write('\n ],\n "agreements": ' + json.dumps(agreements, sort_keys=True))
    out.write(',\n "manifest": ' + json.dumps(signed_manifest, sort_keys=True) + "\n}\n")
    return summary
