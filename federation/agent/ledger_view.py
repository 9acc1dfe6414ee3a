"""The partner ledger read without locking or writing, for the CLI
(`python -m federation.agent ledger`): the stored figures, or with verify the whole replay.

Part of the partner's own privacy ledger (federation/agent/ledger.py, docs/PARTNER-LEDGER.md).
No Django.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .ledger_chain import Chain
from .ledger_errors import InvalidEntry, LedgerCorrupt
from .ledger_format import COMMIT, GENESIS_HASH, LEDGER_FILE, RELEASE, RESERVE, parse_entries, split_lines

__all__ = ["LedgerView", "read_ledger"]


@dataclass
class LedgerView:
    path: Path
    entries: list[dict] = field(default_factory=list)
    torn_bytes: int = 0
    verified: bool = False
    error: LedgerCorrupt | None = None

    @property
    def head_hash(self) -> str:
        return self.entries[-1]["entry_hash"] if self.entries else GENESIS_HASH

    def by_data(self) -> dict[str, dict]:
        """Per data source, the stored figures of its last entry, its rounds and fingerprints."""
        out: dict[str, dict] = {}
        for e in self.entries:
            d = out.setdefault(e.get("data_id"), {"entries": [], "fingerprints": [], "rounds": {}})
            d["entries"].append(e)
            kind, rnd = e.get("kind"), e.get("round")
            if kind == RESERVE:
                fp = (e.get("payload") or {}).get("fingerprint")
                if fp and (not d["fingerprints"] or d["fingerprints"][-1] != fp):
                    d["fingerprints"].append(fp)
            if kind in (RESERVE, COMMIT, RELEASE) and isinstance(rnd, Mapping):
                d["rounds"][json.dumps(rnd, sort_keys=True)] = {RESERVE: "reserved", COMMIT: "committed", RELEASE: "released"}[kind]
        summary = {}
        for data_id, d in out.items():
            last = d["entries"][-1]
            budget, spent = last.get("epsilon_budget"), last.get("epsilon_spent_after")
            states = list(d["rounds"].values())
            summary[data_id] = {
                "budget": budget,
                "delta": last.get("delta"),
                "accountant": last.get("accountant"),
                "budget_source": last.get("budget_source"),
                "spent": spent,
                "remaining": (budget - spent) if isinstance(budget, (int, float)) and isinstance(spent, (int, float)) else None,
                "reserved": states.count("reserved"),
                "committed": states.count("committed"),
                "released": states.count("released"),
                "fingerprints": d["fingerprints"],
                "entries": d["entries"],
            }
        return summary

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "ok": self.error is None,
            "verified": self.verified,
            "entries": len(self.entries),
            "head_hash": self.head_hash,
            "torn_tail_bytes": self.torn_bytes,
            "error": None if self.error is None else {"code": self.error.code, "seq": self.error.seq, "reason": self.error.reason, "message": self.error.message},
            "data": self.by_data(),
        }


def read_ledger(state_dir: str | os.PathLike, *, verify: bool = False) -> LedgerView:
    """Read a state directory's ledger without locking or writing (a running agent may hold it).

    verify=False parses the lines and reports the stored figures; verify=True replays the
    chain, the two-phase protocol and the composition, and sets `error` at the first bad
    entry (the entries before it are kept). Raises FileNotFoundError if there is no ledger.
    """
    path = Path(state_dir) / LEDGER_FILE
    raw = path.read_bytes()
    lines, torn = split_lines(raw)
    view = LedgerView(path=path, torn_bytes=torn, verified=verify)
    try:
        if verify:
            ch = Chain()
            for n, entry in parse_entries(path, lines):
                try:
                    ch.feed(entry)
                except InvalidEntry as e:
                    raise LedgerCorrupt(path, n, str(e)) from None
                view.entries.append(entry)
        else:
            for n, entry in parse_entries(path, lines):
                if not isinstance(entry, Mapping):
                    raise LedgerCorrupt(path, n, "entry is not a JSON object")
                view.entries.append(entry)
    except LedgerCorrupt as e:
        view.error = e
    return view
