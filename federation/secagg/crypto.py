"""Key agreement, key derivation, share encryption and identity signatures.

Domain separation: every derived key and every signed or authenticated byte string starts
with a distinct label and length-prefixes each field, so no value of one kind can be
replayed as another (a channel key is never a mask seed, an advertise signature never
covers anything but an advertise message of that round).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadCiphertext, BadSignature, MalformedMessage

PROTOCOL = b"fedgov-secagg/v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16


def encode_fields(*fields: bytes | str | int) -> bytes:
    """Unambiguous concatenation: each field as 4-byte big-endian length + bytes."""
    out = bytearray()
    for f in fields:
        if isinstance(f, str):
            f = f.encode()
        elif isinstance(f, int):
            f = str(f).encode()
        out += struct.pack(">I", len(f)) + f
    return bytes(out)


def x25519_generate() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private raw 32 bytes, public raw 32 bytes)."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def x25519_load(private_raw: bytes) -> X25519PrivateKey:
    """Load once, exchange many times: loading costs as much as an exchange."""
    return X25519PrivateKey.from_private_bytes(private_raw)


def x25519_public(private_raw: bytes) -> bytes:
    return x25519_load(private_raw).public_key().public_bytes_raw()


PrivateKey = X25519PrivateKey | bytes


def x25519_shared(private: PrivateKey, public_raw: bytes) -> bytes:
    if isinstance(private, bytes):
        private = x25519_load(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError as exc:  # wrong length, or a low-order point giving an all-zero secret
        raise MalformedMessage(f"unusable X25519 public key: {exc}") from exc


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(ikm)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def channel_key(private: PrivateKey, public_raw: bytes, *, round_id: str, a: str, b: str) -> bytes:
    """AES-256-GCM key shared by parties a and b for relaying shares in this round."""
    info = PROTOCOL + b"/channel" + encode_fields(round_id, *_pair(a, b))
    return _hkdf(x25519_shared(private, public_raw), info)


def mask_seed(private: PrivateKey, public_raw: bytes, *, round_id: str, a: str, b: str) -> bytes:
    """The 32-byte PRG seed s_ab of the pairwise mask of a and b in this round."""
    info = PROTOCOL + b"/mask" + encode_fields(round_id, *_pair(a, b))
    return _hkdf(x25519_shared(private, public_raw), info)


def share_aad(*, round_id: str, sender: str, recipient: str) -> bytes:
    return PROTOCOL + b"/share_keys" + encode_fields(round_id, "share_keys", sender, recipient)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || AES-GCM(ciphertext || tag); random 96-bit nonces (the key serves both directions)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise BadCiphertext("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise BadCiphertext("authentication tag mismatch") from exc


def advertise_transcript(*, config_digest: bytes, sender: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a party signs with its Ed25519 identity key in AdvertiseKeys.

    The digest binds round id, roster, threshold and vector length, so a signature from one
    round (or one configuration) never verifies in another.
    """
    return PROTOCOL + b"/advertise_keys" + encode_fields(config_digest, sender, c_pk, s_pk)


def sign(signing_key: Ed25519PrivateKey, data: bytes) -> bytes:
    return signing_key.sign(data)


def verify(identity_public_raw: bytes, signature: bytes, data: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(identity_public_raw).verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature("Ed25519 verification failed") from exc


def ed25519_public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()
