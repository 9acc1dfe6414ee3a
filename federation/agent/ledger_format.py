"""The partner ledger's format: the file's constants, its values and the rules every entry's
fields follow; the data fingerprint; reading the file's lines.

Part of the partner's own privacy ledger (federation/agent/ledger.py, docs/PARTNER-LEDGER.md).
Append-only JSON lines, each with prev_hash and entry_hash (ARCHITECTURE.md, Ledger 3); the
hash is SHA-256 of a domain tag and the canonical JSON of `accounting.chain`. No Django.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accounting import chain

from .ledger_errors import InvalidEntry, LedgerCorrupt, LedgerError

LEDGER_FILE = "partner-ledger.jsonl"
LOCK_FILE = "partner-ledger.lock"
FORMAT_VERSION = 1
HASH_DOMAIN = b"fedgov.partner-ledger.entry.v1\n"
GENESIS_HASH = chain.GENESIS_HASH

BUDGET, SHOWN, RESERVE, COMMIT, RELEASE = "BUDGET", "SHOWN", "RESERVE", "COMMIT", "RELEASE"
KINDS = (BUDGET, SHOWN, RESERVE, COMMIT, RELEASE)
OPERATOR, SHOWN_SOURCE = "operator", "shown"

ENTRY_FIELDS = (
    "v",
    "seq",
    "kind",
    "data_id",
    "round",
    "event",
    "payload",
    "epsilon_budget",
    "delta",
    "accountant",
    "budget_source",
    "epsilon_spent_after",
    "created_at",
    "prev_hash",
)
_ROUND_FIELDS = {"coordinator", "round", "dataset"}
MAX_TEXT = 4096  # data ids, coordinator names, slugs, reasons
HEX64 = re.compile(r"[0-9a-f]{64}")

# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundKey:
    """A round as the partner knows it: which coordinator, which of its rounds, which dataset."""

    coordinator: str
    round: int
    dataset: str

    def __post_init__(self) -> None:
        for name in ("coordinator", "dataset"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
                raise LedgerError(f"a round key's {name} must be a non-empty string, got {value!r}")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round <= 0:
            raise LedgerError(f"a round key's round must be a positive integer, got {self.round!r}")

    def to_json(self) -> dict:
        return {"coordinator": self.coordinator, "round": self.round, "dataset": self.dataset}

    @classmethod
    def from_json(cls, data: Any) -> RoundKey:
        if not isinstance(data, Mapping) or set(data) != _ROUND_FIELDS:
            raise LedgerError(f"a round must be an object with exactly {sorted(_ROUND_FIELDS)}")
        return cls(coordinator=data["coordinator"], round=data["round"], dataset=data["dataset"])

    def __str__(self) -> str:
        return f"{self.round} of dataset {self.dataset} at {self.coordinator}"


@dataclass(frozen=True)
class Budget:
    """The local budget in force for a data source."""

    epsilon: float
    delta: float
    accountant: str = "rdp"
    source: str = OPERATOR  # "operator" (--budget) or "shown" (smallest a coordinator showed)
    shown_by: str | None = None  # "coordinator dataset" of the smallest shown epsilon


@dataclass(frozen=True)
class Reservation:
    key: RoundKey
    data_id: str
    seq: int  # the RESERVE entry
    entry_hash: str
    event: dict
    ticket_hash: str | None
    fingerprint: dict
    state: str = "reserved"  # "reserved" | "committed" | "released"


def default_data_id(path: str | os.PathLike) -> str:
    """The data source's default id: its absolute path, symlinks resolved (one file, one budget)."""
    return str(Path(path).expanduser().resolve())


_fingerprints: dict[tuple, dict] = {}


def data_fingerprint(path: str | os.PathLike) -> dict:
    """SHA-256 of the file's bytes, its size and its record count (CSV rows after the header).

    Cached per process by (inode, size, mtime): the agent fingerprints its file every round.
    """
    p = Path(path)
    st = p.stat()
    ident = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if ident in _fingerprints:
        return dict(_fingerprints[ident])
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    with p.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        rows = sum(1 for row in csv.reader(fh) if any(cell.strip() for cell in row))
    out = {"sha256": digest.hexdigest(), "records": max(rows - 1, 0), "bytes": st.st_size}
    _fingerprints[ident] = out
    return dict(out)


def compute_entry_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 of the domain tag and the canonical JSON of every field but entry_hash."""
    doc = {k: v for k, v in document.items() if k != "entry_hash"}
    return hashlib.sha256(HASH_DOMAIN + chain.canonical_bytes(doc)).hexdigest()


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def check_budget_numbers(epsilon: Any, delta: Any) -> tuple[float, float]:
    eps, dlt = as_number(epsilon), as_number(delta)
    if eps is None or eps <= 0:
        raise InvalidEntry(f"an epsilon budget must be a positive finite number, got {epsilon!r}")
    if dlt is None or not 0.0 < dlt < 1.0:
        raise InvalidEntry(f"delta must be in (0, 1), got {delta!r}")
    return chain.clean_float(eps), chain.clean_float(dlt)


# --- reading the file -----------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def split_lines(raw: bytes) -> tuple[list[bytes], int]:
    """Complete lines, and the length of a final partial line (no newline) to ignore."""
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    return lines, len(torn)


def _parse_line(line: bytes) -> Any:
    return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)


def parse_entries(path: Path, lines: list[bytes]) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(lines, start=1):
        try:
            yield n, _parse_line(line)
        except (UnicodeDecodeError, ValueError) as e:
            raise LedgerCorrupt(path, n, f"not a JSON line ({e})") from None
