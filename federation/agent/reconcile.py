"""A partner checks the coordinator's books against its own, offline
(docs/PARTNER-LEDGER.md, "Reconciling with the coordinator's bundle").

The coordinator's audit bundle says, per dataset, which rounds it charged (COMMIT), which it
gave back (RELEASE) and which receipts it holds. The partner's ledger says which rounds this
agent reserved, committed (its masked input left) or released (nothing left). The two must
agree round by round (ARCHITECTURE.md, Trust between the coordinator and the partners):

* a round this agent committed and the coordinator released, or left out of a chain it
  exported afterwards, is an **under-charge**: a release of the partner's records that the
  coordinator's budget does not count;
* a round the coordinator committed that this agent released, never reserved, or left open
  (its agent stopped before sending) is an **over-charge** of the partner's budget;
* a committed round must carry the same DP event and ticket on both sides, and a receipt
  signed with this agent's key must name a head of this ledger at or after the round's
  COMMIT: anything else is a receipt this ledger did not produce.

The bundle itself is first verified by the auditor's verifier (`accounting.bundle`) against
the coordinator key this agent pinned, for the organisation's chains. Pure: no Django.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from accounting import bundle as bundle_mod
from accounting import chain, manifest
from accounting import receipts as receipts_mod

from .ledger_format import COMMIT, RELEASE, RESERVE

MISMATCH, NOTE = "mismatch", "note"


class ReconcileError(Exception):
    """The books cannot be compared at all (exit 2): a bundle that does not verify, a key
    that is not enrolled, a ledger that does not verify."""


@dataclass(frozen=True)
class Finding:
    level: str  # MISMATCH | NOTE
    dataset: str
    round: int | None
    message: str

    def line(self) -> str:
        where = f"dataset {self.dataset}" + (f", round {self.round}" if self.round is not None else "")
        return f"{self.level.upper()}: {where}: {self.message}"


@dataclass
class Reconciliation:
    key_id: str
    coordinator: str
    organisations: list[str]
    datasets: dict[str, dict] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == MISMATCH for f in self.findings)

    def lines(self) -> list[str]:
        out = [
            f"coordinator key {manifest.fingerprint(self.key_id)}; this agent's organisation(s): {', '.join(self.organisations)}; "
            f"rounds recorded here as at {self.coordinator}"
        ]
        for slug, d in sorted(self.datasets.items()):
            out.append(
                f"{slug}: coordinator charged {d['coordinator_committed']} rounds (epsilon spent {d['coordinator_spent']:.6g}), "
                f"this ledger committed {d['local_committed']}; {d['agreeing']} agree"
            )
        out += [f.line() for f in self.findings]
        n = sum(f.level == MISMATCH for f in self.findings)
        out.append("the books agree" if n == 0 else f"{n} mismatch(es) between the coordinator's books and this ledger")
        return out

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "key_id": self.key_id,
            "coordinator": self.coordinator,
            "organisations": self.organisations,
            "datasets": self.datasets,
            "findings": [f.__dict__ for f in self.findings],
        }


def _coordinator_rounds(c: Mapping[str, Any]) -> tuple[dict[int, dict], dict[int, dict]]:
    """Each round's last state in the coordinator's chain, and the chain's receipts by round."""
    rounds: dict[int, dict] = {}
    for e in c["entries"]:
        kind = e.get("kind")
        if kind == chain.RESERVE:
            rounds[e["round"]] = {"state": "reserved", "event": e["event"], "seq": e["seq"], "ticket_hash": None}
        elif kind in (chain.COMMIT, chain.RELEASE) and e["round"] in rounds:
            r = rounds[e["round"]]
            r["state"], r["seq"] = ("committed" if kind == chain.COMMIT else "released"), e["seq"]
            if kind == chain.COMMIT:
                r["ticket_hash"] = (e.get("payload") or {}).get("ticket_hash")
    receipts = {r["round"]: r for r in c.get("receipts", [])}
    return rounds, receipts


def _local_rounds(entries: Iterable[Mapping[str, Any]], coordinator: str) -> tuple[dict[tuple[str, int], dict], dict[str, int]]:
    """This ledger's rounds at `coordinator`, keyed (dataset, round), and every entry hash's seq."""
    rounds: dict[tuple[str, int], dict] = {}
    seq_of: dict[str, int] = {}
    for e in entries:
        seq_of[e["entry_hash"]] = e["seq"]
        rnd = e.get("round")
        if not isinstance(rnd, Mapping) or rnd.get("coordinator") != coordinator:
            continue
        key = (rnd["dataset"], rnd["round"])
        if e["kind"] == RESERVE:
            rounds[key] = {
                "state": "reserved", "event": e["event"], "ticket_hash": (e.get("payload") or {}).get("ticket_hash"),
                "data_id": e["data_id"], "seq": e["seq"], "at": e.get("created_at"),
            }
        elif e["kind"] in (COMMIT, RELEASE) and key in rounds:
            rounds[key].update(state="committed" if e["kind"] == COMMIT else "released", seq=e["seq"], at=e.get("created_at"))
    return rounds, seq_of


def _before(at: Any, exported_at: Any) -> bool:
    """Whether a ledger entry's time is before the bundle's export (unknown times count as before)."""
    try:
        return datetime.fromisoformat(str(at)) < datetime.fromisoformat(str(exported_at))
    except (TypeError, ValueError):
        return True


def reconcile(
    bundle: Mapping[str, Any],
    ledger_entries: list[dict],
    *,
    agent_key: str,
    pinned_key_id: str,
    coordinator: str,
    datasets: list[str] | None = None,
) -> Reconciliation:
    """Compare a parsed bundle with this agent's verified ledger entries.

    `agent_key` is this agent's identity public key (hex), `pinned_key_id` the key id of the
    coordinator key it pinned, `coordinator` the name its ledger's round keys carry for that
    coordinator. Raises ReconcileError when the books cannot be compared."""
    agents = bundle.get("agents")
    orgs = sorted({a.get("organisation") for a in agents if isinstance(a, Mapping) and a.get("public_key") == agent_key}) if isinstance(agents, list) else []
    if not orgs:
        raise ReconcileError(f"this agent's key {agent_key[:16]}... is not among the bundle's enrolled agents")
    chains = bundle.get("chains") if isinstance(bundle.get("chains"), list) else []
    ours = [c for c in chains if isinstance(c, Mapping) and c.get("organisation") in orgs]
    local, seq_of = _local_rounds(ledger_entries, coordinator)
    wanted = set(datasets) if datasets is not None else {c["dataset"] for c in ours} | {d for d, _ in local}
    slugs = sorted(c["dataset"] for c in ours if c["dataset"] in wanted)
    try:
        report = bundle_mod.verify(bundle, pinned_key_id=pinned_key_id, datasets=slugs) if slugs else None
    except manifest.BundleError as e:
        raise ReconcileError(f"the bundle does not verify: {e}") from None
    if report is None and datasets is not None:
        raise ReconcileError(f"no chain of organisation {', '.join(orgs)} in the bundle is named {', '.join(datasets)}")
    key_id = report.key_id if report is not None else manifest.public_key_from(bundle.get("public_key"))[1]
    if key_id != pinned_key_id:
        raise ReconcileError(f"the bundle is signed by key {manifest.fingerprint(key_id)}, not the pinned {manifest.fingerprint(pinned_key_id)}")
    out = Reconciliation(key_id=key_id, coordinator=coordinator, organisations=orgs)
    spent = {c.dataset: c.epsilon_spent for c in (report.chains if report is not None else [])}
    exported_at = bundle.get("exported_at")

    def find(level: str, slug: str, rnd: int | None, message: str) -> None:
        out.findings.append(Finding(level, slug, rnd, message))

    for slug in sorted({s for s, _ in local if s in wanted} - set(slugs)):
        committed = [r for (s, r), v in local.items() if s == slug and v["state"] == "committed" and _before(v["at"], exported_at)]
        if committed:
            find(MISMATCH, slug, None, f"this ledger committed rounds {committed} on it before the export, and the bundle has no chain "
                 f"for it under organisation {', '.join(orgs)}: ask for a bundle that includes it")
    for c in (c for c in ours if c["dataset"] in slugs):
        slug = c["dataset"]
        coord, receipts = _coordinator_rounds(c)
        mine = {r: v for (s, r), v in local.items() if s == slug}
        agreeing = 0
        for rnd in sorted(set(coord) | set(mine)):
            cv, lv, receipt = coord.get(rnd), mine.get(rnd), receipts.get(rnd)
            cs, ls = (cv or {}).get("state"), (lv or {}).get("state")
            by_me = receipt is not None and receipt.get("agent_public_key") == agent_key
            if cs == "committed":
                if lv is None:
                    if by_me:
                        find(MISMATCH, slug, rnd, "charged with a receipt signed by this agent's key, but this ledger never "
                             "reserved the round: this ledger did not produce that receipt")
                    elif receipt is not None:
                        find(NOTE, slug, rnd, f"run by another agent of the organisation (key {receipt['agent_public_key'][:16]}...)")
                        agreeing += 1
                    else:
                        find(MISMATCH, slug, rnd, "over-charged: the coordinator committed the round and this ledger never ran it")
                    continue
                if ls != "committed":
                    what = "released it (nothing left this machine)" if ls == "released" else "holds it open (its agent stopped before sending)"
                    find(MISMATCH, slug, rnd, f"over-charged: the coordinator committed the round; this ledger {what}")
                    continue
                problems = []
                if not receipts_mod.events_equal(cv["event"], lv["event"]):
                    problems.append("the coordinator charged another DP event than this agent ran")
                if cv["ticket_hash"] is not None and cv["ticket_hash"] != lv["ticket_hash"]:
                    problems.append(f"the coordinator's COMMIT names ticket {str(cv['ticket_hash'])[:16]}..., this ledger reserved "
                                    f"under {str(lv['ticket_hash'])[:16]}...")
                if by_me:
                    head_seq = seq_of.get(receipt["local_ledger_head"])
                    if head_seq is None or head_seq < lv["seq"]:
                        problems.append(f"the receipt signed with this agent's key names ledger head {receipt['local_ledger_head'][:16]}..., "
                                        "which is not an entry of this ledger at or after the round's COMMIT")
                elif receipt is not None:
                    problems.append(f"the receipt is signed by key {receipt['agent_public_key'][:16]}..., not this agent's")
                for p in problems:
                    find(MISMATCH, slug, rnd, p)
                agreeing += not problems
            elif cs == "released":
                if ls == "committed":
                    find(MISMATCH, slug, rnd, "UNDER-CHARGED: this agent committed the round (its masked input left), the "
                         "coordinator released the reservation: its budget does not count this release of your records")
                else:
                    agreeing += 1
            elif cs == "reserved":
                if ls == "committed":
                    find(NOTE, slug, rnd, "committed here, still open at the coordinator when the bundle was exported")
                agreeing += 1
            elif ls == "committed":
                # Missing from the chain is innocent only for a round newer than anything the
                # chain records (round ids grow), committed here after the export.
                if _before(lv["at"], exported_at):
                    find(MISMATCH, slug, rnd, "UNDER-CHARGED: this agent committed the round before the export, and the "
                         "coordinator's chain has no entry for it")
                elif coord and max(coord) > rnd:
                    find(MISMATCH, slug, rnd, f"UNDER-CHARGED: the coordinator's chain has no entry for the round, though it "
                         f"records a later one (round {max(coord)})")
                else:
                    find(NOTE, slug, rnd, "committed here after the bundle was exported, and newer than any round in it: "
                         "a newer bundle must show it")
            elif ls == "reserved":
                find(NOTE, slug, rnd, "open in this ledger; the coordinator's chain has no entry for it")
        out.datasets[slug] = {
            "coordinator_committed": sum(v["state"] == "committed" for v in coord.values()),
            "coordinator_spent": spent.get(slug, 0.0),
            "local_committed": sum(v["state"] == "committed" for v in mine.values()),
            "agreeing": agreeing,
        }
    return out
