"""The signed parts of an audit bundle (ARCHITECTURE.md, Ledger 4 and 5; docs/TRUST-FORMATS.md).

Pure Python + cryptography + the canonical JSON of `accounting.accountant`; no Django. The
coordinator signs each chain head (`head_message`) and, at export, a manifest
(`sign_manifest`): the agent keys receipts are checked against and which organisation each
chain belongs to, neither of which the heads cover. `accounting.bundle` verifies a whole
bundle with these; `accounting.heads` and `accounting.audit` sign with them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import dp_events

HEAD_TYPE = "fedgov.ledger.head.v1"
MANIFEST_TYPE = "fedgov.audit-bundle.manifest.v1"
MANIFEST_DOMAIN = b"fedgov.audit-bundle.manifest.v1\n"
MANIFEST_FIELDS = {"type", "key_id", "exported_at", "agents", "chains", "signature"}
MANIFEST_CHAIN_FIELDS = {"dataset", "organisation", "head_seq", "head_hash"}
# A bundle carrying tickets and agreements (docs/TRUST-FORMATS.md) has its manifest sign their
# digests too: {"agreements": sha256 hex, "tickets": {dataset slug: sha256 hex}}.
MANIFEST_DIGESTS = "digests"
HEAD_FIELDS = ("dataset", "seq", "head_hash", "key_id", "signed_at", "signature")
HEX = re.compile(r"[0-9a-f]+")


class BundleError(Exception):
    """A bundle does not verify; the message names the chain and entry when there is one."""

    def __init__(self, message: str, *, dataset: str | None = None, seq: int | None = None) -> None:
        super().__init__(message)
        self.dataset, self.seq = dataset, seq


def head_message(*, dataset: str, seq: int, head_hash: str, key_id: str, signed_at: str) -> bytes:
    """The bytes the coordinator signs for a chain head (canonical JSON, domain-separated)."""
    return dp_events.canonical_json(
        {"type": HEAD_TYPE, "dataset": dataset, "seq": seq, "head_hash": head_hash, "key_id": key_id, "signed_at": signed_at}
    ).encode("utf-8")


def manifest_message(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the coordinator signs for a bundle's manifest (domain, then canonical JSON
    of the manifest without its signature)."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return MANIFEST_DOMAIN + dp_events.canonical_json(body).encode("utf-8")


def sign_manifest(
    *, private_key, key_id: str, exported_at: str, agents: list, chains: list, digests: dict | None = None
) -> dict:
    """The manifest of a bundle, signed by `private_key` (the coordinator's ledger key);
    `digests` ({"agreements": sha256_hex(agreements), "tickets": {slug: sha256_hex(tickets)}})
    when the bundle carries tickets and agreements."""
    manifest = {"type": MANIFEST_TYPE, "key_id": key_id, "exported_at": exported_at, "agents": agents, "chains": chains}
    if digests is not None:
        manifest[MANIFEST_DIGESTS] = digests
    manifest["signature"] = private_key.sign(manifest_message(manifest)).hex()
    return manifest


def key_id_of(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()


def public_key_from(info: Mapping[str, Any]) -> tuple[Ed25519PublicKey, str]:
    """(key, key_id) from a bundle's public_key block; PEM, hex and key_id must agree."""
    if not isinstance(info, Mapping) or info.get("algorithm") != "Ed25519":
        raise BundleError("public_key must be an Ed25519 key block")
    hex_key = info.get("hex")
    if not isinstance(hex_key, str) or len(hex_key) != 64 or not HEX.fullmatch(hex_key):
        raise BundleError("public_key.hex must be 64 lowercase hex digits")
    raw = bytes.fromhex(hex_key)
    key = Ed25519PublicKey.from_public_bytes(raw)
    pem = info.get("pem")
    if pem is not None:
        try:
            from_pem = serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError, AttributeError) as e:
            raise BundleError(f"public_key.pem cannot be read: {e}") from None
        if not isinstance(from_pem, Ed25519PublicKey) or from_pem.public_bytes_raw() != raw:
            raise BundleError("public_key.pem and public_key.hex are different keys")
    kid = key_id_of(raw)
    if info.get("key_id") != kid:
        raise BundleError("public_key.key_id is not the SHA-256 of the key")
    return key, kid


def verify_head(head: Mapping[str, Any], key: Ed25519PublicKey, kid: str, *, dataset: str) -> None:
    if not isinstance(head, Mapping) or set(head) != set(HEAD_FIELDS):
        raise BundleError(f"dataset {dataset}: a signed head has the wrong fields", dataset=dataset)
    seq = head["seq"]
    if head["dataset"] != dataset or isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise BundleError(f"dataset {dataset}: a signed head names another chain or a bad seq", dataset=dataset)
    if head["key_id"] != kid:
        raise BundleError(
            f"dataset {dataset}: head #{seq} was signed by another key ({str(head['key_id'])[:16]}...)", dataset=dataset, seq=seq
        )
    sig = head["signature"]
    if not isinstance(sig, str) or len(sig) != 128 or not HEX.fullmatch(sig):
        raise BundleError(f"dataset {dataset}: head #{seq}: signature is not 128 lowercase hex digits", dataset=dataset, seq=seq)
    if not isinstance(head["head_hash"], str) or not isinstance(head["signed_at"], str):
        raise BundleError(f"dataset {dataset}: head #{seq}: malformed", dataset=dataset, seq=seq)
    message = head_message(dataset=dataset, seq=seq, head_hash=head["head_hash"], key_id=kid, signed_at=head["signed_at"])
    try:
        key.verify(bytes.fromhex(sig), message)
    except InvalidSignature:
        raise BundleError(f"dataset {dataset}: head #{seq}: the signature does not verify", dataset=dataset, seq=seq) from None


def fingerprint(key_id: str) -> str:
    """A key's short fingerprint: the first 16 hex digits of sha256(raw key), in groups of four."""
    return " ".join(key_id[i : i + 4] for i in range(0, 16, 4))


def check_manifest(bundle: Mapping[str, Any], key: Ed25519PublicKey, kid: str) -> dict[str, Mapping[str, Any]] | None:
    """The coordinator-signed manifest, checked against the bundle's agents and chains;
    returns dataset slug -> its manifest line, or None when the bundle has no manifest."""
    manifest = bundle.get("manifest")
    if manifest is None:
        return None
    if (
        not isinstance(manifest, Mapping)
        or set(manifest) - {MANIFEST_DIGESTS} != MANIFEST_FIELDS
        or manifest["type"] != MANIFEST_TYPE
    ):
        raise BundleError(f"manifest: fields or type differ from {MANIFEST_TYPE}")
    if manifest["key_id"] != kid:
        raise BundleError(f"manifest: signed by another key ({str(manifest['key_id'])[:16]}...)")
    sig = manifest["signature"]
    if not isinstance(sig, str) or len(sig) != 128 or not HEX.fullmatch(sig):
        raise BundleError("manifest: signature is not 128 lowercase hex digits")
    try:
        key.verify(bytes.fromhex(sig), manifest_message(manifest))
    except (InvalidSignature, TypeError, ValueError):
        raise BundleError(
            "manifest: the coordinator's signature does not verify (agents or chain organisations altered?)"
        ) from None
    if manifest["exported_at"] != bundle.get("exported_at"):
        raise BundleError("manifest: exported_at differs from the bundle's")
    signed_agents = {(a.get("organisation"), a.get("public_key")) for a in manifest["agents"] if isinstance(a, Mapping)}
    listed = bundle.get("agents", [])
    listed_agents = (
        {(a.get("organisation"), a.get("public_key")) for a in listed if isinstance(a, Mapping)}
        if isinstance(listed, list)
        else set()
    )
    for org, hex_key in sorted(listed_agents - signed_agents, key=str):
        raise BundleError(f"agents: key {str(hex_key)[:16]}... of organisation {org} is not in the coordinator's signed manifest")
    for org, hex_key in sorted(signed_agents - listed_agents, key=str):
        raise BundleError(f"agents: key {str(hex_key)[:16]}... of organisation {org}, in the signed manifest, is missing")
    if dp_events.canonical_json(manifest["agents"]) != dp_events.canonical_json(listed):
        raise BundleError("agents: the list differs from the coordinator's signed manifest")
    lines: dict[str, Mapping[str, Any]] = {}
    for line in manifest["chains"] if isinstance(manifest["chains"], list) else [None]:
        if not isinstance(line, Mapping) or set(line) != MANIFEST_CHAIN_FIELDS or not isinstance(line["dataset"], str):
            raise BundleError("manifest: a chain line has the wrong fields")
        lines[line["dataset"]] = line
    chains = bundle.get("chains") if isinstance(bundle.get("chains"), list) else []
    present = {c.get("dataset") for c in chains if isinstance(c, Mapping)}
    for slug in sorted(set(lines) - present):
        raise BundleError(f"dataset {slug}: in the coordinator's signed manifest, missing from the bundle", dataset=slug)
    for c in chains:
        if not isinstance(c, Mapping):
            continue
        slug = c.get("dataset")
        line = lines.get(slug)
        if line is None:
            raise BundleError(f"dataset {slug}: not in the coordinator's signed manifest", dataset=slug)
        if c.get("organisation") != line["organisation"]:
            raise BundleError(
                f"dataset {slug}: the chain names organisation {c.get('organisation')!r}, the coordinator's signed manifest "
                f"{line['organisation']!r}",
                dataset=slug,
            )
    _check_digests(bundle, manifest.get(MANIFEST_DIGESTS))
    return lines


def sha256_hex(value: Any) -> str:
    """SHA-256 of the canonical JSON of `value`."""
    return hashlib.sha256(dp_events.canonical_json(value).encode("utf-8")).hexdigest()


def _check_digests(bundle: Mapping[str, Any], signed: Any) -> None:
    """The bundle's agreements and tickets are exactly those the signed manifest covers: none
    edited, added or removed, and no section dropped whose digest the manifest signs."""
    chains = [c for c in bundle.get("chains") or [] if isinstance(c, Mapping)]
    carried = "agreements" in bundle or any("tickets" in c for c in chains)
    if signed is None:
        if carried:
            raise BundleError("manifest: the bundle carries agreements and tickets its signed manifest does not cover")
        return
    if not carried:
        raise BundleError("manifest: it signs the digests of agreements and tickets the bundle lacks (sections removed?)")
    if not isinstance(signed, Mapping) or set(signed) != {"agreements", "tickets"} or not isinstance(signed["tickets"], Mapping):
        raise BundleError("manifest: digests must be {agreements, tickets}")
    try:
        agreements = sha256_hex(bundle.get("agreements"))
        tickets = {c.get("dataset"): sha256_hex(c.get("tickets")) for c in chains}
    except (TypeError, ValueError) as e:
        raise BundleError(f"agreements or tickets cannot be serialised canonically: {e}") from None
    if agreements != signed["agreements"]:
        raise BundleError("agreements: they differ from what the coordinator's signed manifest covers")
    for slug in sorted(set(tickets) | set(signed["tickets"]), key=str):
        if tickets.get(slug) != signed["tickets"].get(slug):
            raise BundleError(
                f"dataset {slug}: its tickets differ from what the coordinator's signed manifest covers", dataset=slug
            )
