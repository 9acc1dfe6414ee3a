"""The agent's keys: its long-term Ed25519 identity, kept in the state directory, and the
coordinator's ledger key the operator may pin (--coordinator-key)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: Where the agent keeps the coordinator's ledger key it pinned (first enrolment or --coordinator-key).
PINNED_KEY_FILE = "coordinator_ledger_key.hex"
IDENTITY_FILE = "identity_ed25519.pem"


def load_identity(state_dir: Path) -> Ed25519PrivateKey:
    """The long-term Ed25519 identity key, created on first run and kept (0600) in state_dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / IDENTITY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def load_public_identity(state_dir: Path) -> str:
    """The identity's public key (hex) of an existing state directory; never creates one."""
    key = serialization.load_pem_private_key((state_dir / IDENTITY_FILE).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{state_dir / IDENTITY_FILE} is not an Ed25519 private key")
    return public_hex(key)


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_coordinator_key(value: str) -> str:
    """--coordinator-key: 64 hex digits, or a file holding them or a PEM public key."""
    text = value.strip()
    path = Path(text)
    if not (len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)) and path.is_file():
        data = path.read_bytes()
        if b"BEGIN PUBLIC KEY" in data:
            key = serialization.load_pem_public_key(data)
            return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        text = data.decode().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("--coordinator-key must be a raw Ed25519 public key (64 hex digits), or a file holding one or its PEM")
    return raw.hex()
