"""The ledger on the database: locking, appending, signing, verifying, exporting.

Services (accounting/services/budget.py) decide *what* to append; this module does the appending
the one way it may be done:

1. the caller is inside `transaction.atomic()`;
2. `lock_budget()` takes the dataset's DatasetBudget row with SELECT ... FOR UPDATE (on
   SQLite, fedgov's IMMEDIATE transactions hold the database write lock from BEGIN), so the
   head hash, the sequence number and the cumulative RDP vector read next are the latest,
   and nobody else appends to this chain until we commit;
3. `append()` builds the entry document (accounting/chain.py), hashes it with the previous
   head, inserts it and moves the head.

Verification streams a chain from the database (`.iterator(chunk_size=...)`) through the same
`chain.ChainVerifier` an auditor runs on a bundle, then compares the DatasetBudget row (the
cached head and composition the budget checks rely on) with what the replay produced.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from . import accountant as acc
from . import bundle as bundle_mod
from . import chain
from .models import DatasetBudget, LedgerEntry, Receipt, SignedHead, iso

log = logging.getLogger(__name__)

VERIFY_CHUNK_SIZE = 2000


# --- the coordinator's signing key ------------------------------------------------------------


def key_path() -> Path:
    default = Path(getattr(settings, "BASE_DIR", ".")) / "var" / "ledger_ed25519.pem"
    return Path(getattr(settings, "FEDGOV_LEDGER_KEY_FILE", None) or default)


_key_lock = threading.Lock()
_key_cache: dict[str, Ed25519PrivateKey] = {}


def signing_key() -> Ed25519PrivateKey:
    """The coordinator's Ed25519 key, generated on first use into FEDGOV_LEDGER_KEY_FILE (0600).

    Creation is atomic and exclusive (written to a temporary file, then hard-linked into
    place), so two processes starting together end up with the same single key.
    """
    path = key_path()
    with _key_lock:
        cached = _key_cache.get(str(path))
        if cached is not None:
            return cached
        if not path.exists():
            _create_key(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ImproperlyConfigured(f"{path} is readable by others (mode {mode:o}); the ledger signing key must be 0600")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured(f"{path} does not hold an Ed25519 private key")
        _key_cache[str(path)] = key
        return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-key-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process got there first: keep theirs
            log.warning("generated the ledger signing key %s", path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def public_key_raw() -> bytes:
    return signing_key().public_key().public_bytes_raw()


def public_key_hex() -> str:
    return public_key_raw().hex()


def public_key_pem() -> str:
    return (
        signing_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_id() -> str:
    return bundle_mod.key_id_of(public_key_raw())


def public_key_block() -> dict:
    return {"algorithm": "Ed25519", "hex": public_key_hex(), "pem": public_key_pem(), "key_id": key_id()}


# --- locking and appending --------------------------------------------------------------------


def _require_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("ledger appends must run inside transaction.atomic()")


def lock_budget(dataset) -> DatasetBudget:
    """Lock (and if need be create) the dataset's budget row for the rest of the transaction.

    This row serialises every append to the dataset's chain: two rounds checking and
    reserving at once queue here, and the second sees the first's reservation (the race
    ARCHITECTURE.md, Ledger 1 forbids). Lock several datasets in increasing id order only.
    """
    _require_transaction()
    budget = DatasetBudget.objects.select_for_update().filter(dataset_id=dataset.pk).first()
    if budget is not None:
        return budget
    try:
        with transaction.atomic():  # a savepoint: on PostgreSQL a lost race must not poison the transaction
            DatasetBudget.objects.create(
                dataset_id=dataset.pk,
                chain_slug=dataset.slug,
                accountant=dataset.accountant,
                epsilon_budget=0.0,
                delta=dataset.delta,
                cum_rdp=acc.rdp_to_json(acc.zero_rdp()),
            )
    except IntegrityError:
        pass  # another transaction created it; the SELECT below waits for its commit
    return DatasetBudget.objects.select_for_update().get(dataset_id=dataset.pk)


def chain_name(dataset, budget: DatasetBudget) -> str:
    """A chain is named by its dataset's slug when the ledger opened, for good (bundles use it;
    renaming a dataset does not fork its chain)."""
    return budget.chain_slug or dataset.slug


def live_event_keys(dataset_id: int) -> list[str]:
    """Events reserved and not released, in reservation order (what PLD composes). O(ledger)."""
    live: dict[int, str] = {}
    rows = (
        LedgerEntry.objects.filter(dataset_id=dataset_id, kind__in=[chain.RESERVE, chain.RELEASE])
        .order_by("seq")
        .values_list("kind", "round_id", "event")
    )
    for kind, round_id, event in rows.iterator(chunk_size=VERIFY_CHUNK_SIZE):
        if kind == chain.RESERVE:
            live[round_id] = event
        else:
            live.pop(round_id, None)
    return list(live.values())


@dataclass(frozen=True)
class Projection:
    """What a dataset's chain would hold after one more entry."""

    cum: np.ndarray
    epsilon_spent: float
    accountant: str
    delta: float


def project(
    budget: DatasetBudget,
    dataset,
    *,
    add: tuple[str, np.ndarray] | None = None,
    remove: tuple[str, np.ndarray] | None = None,
) -> Projection:
    """Composition after adding (RESERVE) or removing (RELEASE) one event; O(orders) for RDP.

    Epsilon is taken at the dataset's current delta with its current accountant, exactly as
    chain.ChainVerifier recomputes it, so the stored figure replays bit for bit.
    """
    cum = acc.rdp_from_json(budget.cum_rdp)
    if add is not None:
        cum = acc.rdp_add(cum, add[1])
    if remove is not None:
        cum = acc.rdp_subtract(cum, remove[1])
    accountant, delta = str(dataset.accountant), float(dataset.delta)
    if add is None and remove is None and accountant == budget.accountant and delta == budget.delta:
        return Projection(cum, budget.epsilon_spent, accountant, delta)  # nothing changed
    live: list[str] = []
    if accountant == "pld":
        live = live_event_keys(dataset.pk)
        if add is not None:
            live.append(add[0])
        if remove is not None:
            live.remove(remove[0])
    eps = chain.spent_epsilon(accountant=accountant, delta=delta, cum=cum, live_events=live)
    return Projection(cum, eps, accountant, delta)


def append(
    budget: DatasetBudget,
    dataset,
    *,
    kind: str,
    projection: Projection,
    epsilon_budget: float,
    actor: str,
    round_id: int | None = None,
    event: str | None = None,
    payload: dict | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    """Append one entry to the locked chain and move its head. Call only after lock_budget()."""
    _require_transaction()
    entry = build_entry(
        budget,
        dataset_slug=chain_name(dataset, budget),
        kind=kind,
        projection=projection,
        epsilon_budget=epsilon_budget,
        actor=actor,
        round_id=round_id,
        event=event,
        payload=payload,
        now=now,
    )
    entry.dataset_id = dataset.pk
    # Ledger rows are built by code from validated inputs; full_clean() would add two
    # uniqueness queries per append. The database constraints and the chain check stand guard.
    entry.save()
    advance(budget, entry, projection)
    budget.save()
    return entry


def build_entry(
    budget: DatasetBudget,
    *,
    dataset_slug: str,
    kind: str,
    projection: Projection,
    epsilon_budget: float,
    actor: str,
    round_id: int | None = None,
    event: str | None = None,
    payload: dict | None = None,
    now: datetime | None = None,
) -> LedgerEntry:
    """The next entry of `budget`'s chain (not saved). `advance()` then moves the head."""
    if kind not in chain.KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    created_at = (now or timezone.now()).astimezone(UTC)
    payload_text = acc.canonical_json(payload or {})
    entry = LedgerEntry(
        dataset_id=budget.dataset_id,
        dataset_slug=dataset_slug,
        seq=budget.entry_count + 1,
        kind=kind,
        round_id=round_id,
        event=event or "",
        accountant=projection.accountant,
        delta=chain.clean_float(projection.delta),
        epsilon_budget=chain.clean_float(epsilon_budget),
        epsilon_spent_after=chain.clean_float(projection.epsilon_spent),
        actor=(actor or "system")[:150],
        created_at=created_at,
        payload=payload_text,
        prev_hash=budget.head_hash,
    )
    doc = entry.document()
    doc.pop("entry_hash")
    entry.entry_hash = chain.compute_entry_hash(doc)
    return entry


def advance(budget: DatasetBudget, entry: LedgerEntry, projection: Projection) -> None:
    budget.entry_count = entry.seq
    budget.head_hash = entry.entry_hash
    budget.cum_rdp = acc.rdp_to_json(projection.cum)
    budget.epsilon_spent = entry.epsilon_spent_after
    budget.epsilon_budget = entry.epsilon_budget
    budget.accountant = entry.accountant
    budget.delta = entry.delta


def actor_name(actor: Any) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor or "system"
    return getattr(actor, "get_username", lambda: "")() or getattr(actor, "username", "") or "system"


# --- signing heads ----------------------------------------------------------------------------


def sign_head(dataset) -> SignedHead | None:
    """Sign the dataset's current head (idempotent: an already signed head is returned)."""
    budget = DatasetBudget.objects.filter(dataset_id=dataset.pk).first()
    if budget is None or budget.entry_count == 0:
        return None
    kid = key_id()
    existing = SignedHead.objects.filter(dataset_id=dataset.pk, seq=budget.entry_count, key_id=kid).first()
    if existing is not None:
        return existing
    slug = chain_name(dataset, budget)
    signed_at = iso(timezone.now())
    message = bundle_mod.head_message(
        dataset=slug, seq=budget.entry_count, head_hash=budget.head_hash, key_id=kid, signed_at=signed_at
    )
    head = SignedHead(
        dataset_id=dataset.pk,
        dataset_slug=slug,
        seq=budget.entry_count,
        head_hash=budget.head_hash,
        key_id=kid,
        signed_at=datetime.fromisoformat(signed_at),
        signature=signing_key().sign(message).hex(),
    )
    try:
        with transaction.atomic():
            head.save()
    except IntegrityError:  # signed concurrently by another process
        return SignedHead.objects.get(dataset_id=dataset.pk, seq=budget.entry_count, key_id=kid)
    return head


def sign_heads_after_commit(dataset_ids: Iterable[int]) -> None:
    """Schedule head signatures once the caller's transaction commits (crypto stays outside
    the locked section and off the budget check, ARCHITECTURE.md, Conventions 7). A failure
    is logged: the beat sweep (`sign_pending_heads`) signs what was left unsigned."""
    if not getattr(settings, "FEDGOV_LEDGER_SIGN_ON_COMMIT", True):
        return  # heads are then signed by the beat sweep (or export_ledger --sign-pending)
    ids = sorted(set(dataset_ids))

    def sign() -> None:
        from federation.models import Dataset

        for dataset in Dataset.objects.filter(pk__in=ids):
            try:
                sign_head(dataset)
            except Exception:  # noqa: BLE001 (a signature can always be made later)
                log.exception("could not sign the ledger head of dataset %s", dataset.slug)

    transaction.on_commit(sign)


def unsigned_heads():
    """Budgets whose current head (entry_count > 0) has no signature with the current key."""
    signed = SignedHead.objects.filter(dataset_id=OuterRef("dataset_id"), seq=OuterRef("entry_count"), key_id=key_id())
    return DatasetBudget.objects.filter(entry_count__gt=0).exclude(Exists(signed))


def sign_pending_heads(*, datasets=None) -> list[SignedHead]:
    """Sign every chain head left unsigned (an append whose after-commit signature failed, or
    signing on commit turned off): the schedule's half of "heads are signed when entries
    are appended or on a schedule". Reading a ledger or exporting a bundle never signs."""
    from federation.models import Dataset

    pending = unsigned_heads()
    if datasets is not None:
        pending = pending.filter(dataset_id__in=[d.pk for d in datasets])
    ids = list(pending.values_list("dataset_id", flat=True))
    heads = []
    for dataset in Dataset.objects.filter(pk__in=ids).order_by("id"):
        head = sign_head(dataset)
        if head is not None:
            heads.append(head)
    return heads


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
        bundle_mod.verify_head(document, public_key, kid, dataset=slug)
    except bundle_mod.BundleError as e:
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


def export_bundle(out, *, datasets=None, agents: list[dict] | None = None, chunk_size: int = VERIFY_CHUNK_SIZE) -> dict:
    """Write a signed audit bundle to the text stream `out`; returns a summary.

    Exporting only reads: each chain is exported up to its latest head signed with the
    current key (heads are signed after each append and by the beat sweep, never by an
    export, so downloading a bundle writes nothing). Appends racing the export, or a head
    not signed yet, are left for the next one; a chain with no signed head is listed in
    `summary["unsigned"]` and left out. Entries are streamed, not held in memory.
    Each chain carries its dataset's organisation and the receipts of its rounds committed
    with a ticket up to that head; `agents` (default: the enrolled agents of the chains'
    organisations) lists the keys receipts are checked against.
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
        ticketed: set[int] = set()  # rounds committed with a ticket: their receipts go in
        for i, entry in enumerate(qs.iterator(chunk_size=chunk_size)):
            doc = entry.document()
            if doc["kind"] == chain.COMMIT and "ticket_hash" in doc["payload"]:
                ticketed.add(doc["round"])
            out.write(("\n   " if i == 0 else ",\n   ") + acc.canonical_json(doc))
        heads = SignedHead.objects.filter(dataset_id=dataset.pk, seq__lte=head.seq, key_id=kid).order_by("seq")
        out.write('\n  ], "signed_heads": [')
        for i, h in enumerate(heads):
            out.write(("\n   " if i == 0 else ",\n   ") + acc.canonical_json(h.document()))
        out.write('\n  ], "receipts": [')
        first_receipt = True
        for round_id, body in (
            Receipt.objects.filter(dataset_id=dataset.pk).order_by("seq").values_list("round_id", "body").iterator(chunk_size)
        ):
            if round_id in ticketed:
                out.write(("\n   " if first_receipt else ",\n   ") + body)
                first_receipt = False
        out.write("\n  ]}")
        summary["chains"][head.dataset_slug] = head.seq
        manifest_chains.append(
            {"dataset": head.dataset_slug, "organisation": organisation, "head_seq": head.seq, "head_hash": head.head_hash}
        )
    # The coordinator signs the agents and each chain's organisation and head (the README, "Partners need not trust the coordinator",
    # the bundle): an export signature, not a ledger head, so exporting still writes nothing.
    manifest = bundle_mod.sign_manifest(
        private_key=signing_key(), key_id=kid, exported_at=exported_at, agents=agents, chains=manifest_chains
    )
    out.write('\n ],\n "manifest": ' + json.dumps(manifest, sort_keys=True) + "\n}\n")
    return summary
