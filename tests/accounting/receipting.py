"""A ledger with tickets and partners' receipts, built through the real services, and the two
verifiers an auditor can run on its bundle (docs/TRUST-FORMATS.md)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command

from accounting import chain, heads, receipts
from accounting.models import LedgerEntry
from accounting.services import budget as services
from accounting.services import receipts as receipt_services
from federation.models import Membership, ModelVersion, RoundParticipant, RoundTicket, TrainingRound
from federation.services.agents import agent_enrol
from federation.services.tickets import round_tickets_issue
from tests.accounting.helpers import make_rounds, set_status
from tests.factories import UserFactory, member

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Runs `python -m MODULE ARGS` with Django, DRF and Celery made unimportable: the auditor's or
# the partner's machine, which has none of the coordinator's stack.
BLOCKED_RUNNER = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('django', 'rest_framework', 'celery'):
            raise ImportError('blocked off the coordinator: ' + name)
        return None
sys.meta_path.insert(0, Block())
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def ticket_hash_for(reserve: LedgerEntry) -> str:
    """The coordinator's signed ticket for one RESERVE, issued by the ticket code as a round's
    start issues it (federation/services/tickets.py); returns its hash."""
    round = TrainingRound.objects.get(pk=reserve.round_id)
    link = RoundParticipant.objects.select_related("dataset__organisation").get(round=round, dataset_id=reserve.dataset_id)
    model = ModelVersion.objects.filter(plan=round.plan, version=0).first() or ModelVersion.objects.create(
        plan=round.plan, version=0, params=b"", sha256="ab" * 32
    )
    config = {"weights": {link.dataset.organisation.slug: 1.0}, "quant": {"bits": 32}}
    round_tickets_issue(round=round, links=[link], model=model, config=config)
    return RoundTicket.objects.get(participant=link).ticket_hash


@dataclass
class Receipted:
    cast: object
    keys: dict  # organisation slug -> Ed25519PrivateKey (enrolled)
    rounds: list
    tickets: dict = field(default_factory=dict)  # (round id, dataset slug) -> ticket hash
    path: pathlib.Path | None = None

    def receipt(self, round_id: int, slug: str, *, key=None, **changes) -> dict:
        reserve = LedgerEntry.objects.get(round_id=round_id, dataset_slug=slug, kind=chain.RESERVE)
        org = slug.rsplit("-records", 1)[0]
        key = key or self.keys[org]
        body = {
            "round": round_id,
            "dataset": slug,
            "ticket_hash": self.tickets[(round_id, slug)],
            "event": json.loads(reserve.event),
            "local_ledger_head": hashlib.sha256(f"{org}:{round_id}".encode()).hexdigest(),
            "agent_public_key": key.public_key().public_bytes_raw().hex(),
        }
        body.update(changes)
        return receipts.sign_receipt(body, key)

    def data(self) -> dict:
        return json.loads(self.path.read_text())


def enrol_agents(cast) -> dict:
    keys = {}
    for org in (cast.org_a, cast.org_b, cast.org_c):
        user = member(UserFactory(username=f"agent-of-{org.slug}"), org, Membership.Role.AGENT)
        key = Ed25519PrivateKey.generate()
        agent_enrol(user=user, public_key_hex=key.public_key().public_bytes_raw().hex())
        keys[org.slug] = key
    return keys


def record(h: Receipted, round_id: int, slug: str, **kw):
    org = slug.rsplit("-records", 1)[0]
    return receipt_services.receipt_record(
        receipt=h.receipt(round_id, slug, **kw), organisation=org, public_key=h.keys[org].public_key().public_bytes_raw().hex()
    )


def build(cast, tmp_path) -> Receipted:
    """Rounds r1, r2: reserved, receipts, committed with tickets. r3: committed, then its
    receipts. r4: reserved and released (no update left: no receipt needed)."""
    keys = enrol_agents(cast)
    r1, r2, r3, r4 = make_rounds(cast.plan, 4)
    h = Receipted(cast=cast, keys=keys, rounds=[r1, r2, r3, r4])
    slugs = [d.slug for d in cast.datasets]
    for r in (r1, r2, r3, r4):
        for e in services.budget_reserve(round=r, actor=cast.admin):
            h.tickets[(r.pk, e.dataset_slug)] = ticket_hash_for(e)
    by_pk = {d.pk: d.slug for d in cast.datasets}
    for r in (r1, r2):
        for slug in slugs:
            record(h, r.pk, slug)
        services.budget_commit(round=r, actor=cast.admin, ticket_hashes={pk: h.tickets[(r.pk, s)] for pk, s in by_pk.items()})
    services.budget_commit(round=r3, actor=cast.admin, ticket_hashes={pk: h.tickets[(r3.pk, s)] for pk, s in by_pk.items()})
    for slug in slugs:
        record(h, r3.pk, slug)
    set_status(r4, TrainingRound.Status.ABORTED)
    services.budget_release(round=r4, actor=cast.admin, reason="aborted before training", no_update_released=True)
    h.path = tmp_path / "bundle.json"
    call_command("export_ledger", out=str(h.path), sign_pending=True)
    return h


# --- the two verifiers ---------------------------------------------------------------------------


def run_without_django(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a fresh process where Django, DRF and Celery cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUNNER, module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m accounting.verify ARGS`, as the auditor runs it."""
    return run_without_django("accounting.verify", *args)


def pinned() -> str:
    return heads.public_key_hex()


def both_fail(data: dict | None, tmp_path, match: str, *, path=None, extra: tuple = ()) -> None:
    """The management command and the standalone verifier both refuse, with `match` in the message."""
    if path is None:
        path = tmp_path / "tampered.json"
        path.write_text(json.dumps(data))
    args = ["--public-key", pinned(), *extra] if "--trust-bundle-key" not in extra else list(extra)
    with pytest.raises(CommandError) as excinfo:
        options = {"bundle": str(path)}
        it = iter(args)
        for a in it:
            name = a.lstrip("-").replace("-", "_")
            options[name] = True if name in ("trust_bundle_key", "require_tickets") else next(it)
        call_command("verify_ledger", **options)
    assert match in str(excinfo.value), str(excinfo.value)
    assert excinfo.value.returncode == 1
    result = run_cli(str(path), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert match in result.stderr, result.stderr
