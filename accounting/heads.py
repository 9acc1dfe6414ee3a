"""The coordinator's signing key and the signed heads of the ledger's chains.

The key is an Ed25519 key generated on first use into FEDGOV_LEDGER_KEY_FILE (0600). A head
is signed after each append commits (`sign_heads_after_commit`) or by the beat sweep
(`sign_pending_heads`); reading a ledger or exporting a bundle never signs. The signed
message is the bundle format's (`accounting.manifest.head_message`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from . import manifest
from .ledger import chain_name
from .models import DatasetBudget, SignedHead, iso

log = logging.getLogger(__name__)


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
    return manifest.key_id_of(public_key_raw())


def public_key_block() -> dict:
    return {"algorithm": "Ed25519", "hex": public_key_hex(), "pem": public_key_pem(), "key_id": key_id()}


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
    message = manifest.head_message(
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
