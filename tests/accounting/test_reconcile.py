"""A partner reconciles the coordinator's audit bundle with its own ledger
(`python -m federation.agent reconcile`, federation/agent/reconcile.py).

The coordinator's side is built through the real ledger services and exported with
`export_ledger`; the partner's side is a real partner ledger (federation/agent/ledger.py) in a
state directory holding the identity key the coordinator enrolled. The command runs in a
fresh process in which Django, DRF and Celery cannot be imported, as on a partner's machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command

from accounting import heads, receipts
from accounting.models import LedgerEntry
from accounting.services import budget as services
from accounting.services import receipts as receipt_services
from federation.agent.identity import PINNED_KEY_FILE
from federation.agent.ledger import PartnerLedger
from federation.agent.ledger_format import LEDGER_FILE, RoundKey, default_data_id
from federation.models import TrainingRound
from tests.accounting.helpers import make_rounds, set_status
from tests.accounting.receipting import enrol_agents, run_without_django, ticket_hash_for

pytestmark = pytest.mark.django_db



class Books:
    """Org A's agent and the coordinator, kept round by round."""

    def __init__(self, cast, tmp_path: Path):
        self.cast, self.tmp = cast, tmp_path
        self.keys = enrol_agents(cast)
        self.state = tmp_path / "agent-a"
        self.state.mkdir()
        pem = self.keys["org-a"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (self.state / "identity_ed25519.pem").write_bytes(pem)
        self.coordinator = heads.public_key_hex()
        (self.state / PINNED_KEY_FILE).write_text(self.coordinator + "\n")
        self.data = tmp_path / "a.csv"
        self.data.write_text("x,y\n0.1,0\n0.2,1\n")
        self.data_id = default_data_id(self.data)
        self.slug = cast.datasets[0].slug
        with PartnerLedger.open(self.state) as book:
            book.set_budget(self.data_id, epsilon=50.0, delta=1e-5)
        self.tickets: dict[tuple[int, str], str] = {}

    def rounds(self, n: int) -> list[TrainingRound]:
        return make_rounds(self.cast.plan, n)

    def reserve(self, r: TrainingRound) -> None:
        for e in services.budget_reserve(round=r, actor=self.cast.admin):
            self.tickets[(r.pk, e.dataset_slug)] = ticket_hash_for(e)

    def event(self, r: TrainingRound) -> dict:
        return json.loads(LedgerEntry.objects.get(round_id=r.pk, dataset_slug=self.slug, kind="RESERVE").event)

    def local(self, r: TrainingRound, then: str | None, *, event: dict | None = None, ticket: str | None = None) -> str:
        """The agent reserves the round in its own ledger, then commits or releases it; its head."""
        key = RoundKey(coordinator=self.coordinator, round=r.pk, dataset=self.slug)
        with PartnerLedger.open(self.state) as book:
            book.reserve(key, data_id=self.data_id, event=event or self.event(r), ticket_hash=ticket or self.tickets.get((r.pk, self.slug)), data_path=self.data)
            if then == "commit":
                book.commit(key)
            elif then == "release":
                book.release(key, reason="declined before training")
            return book.head_hash

    def receipt(self, r: TrainingRound, head: str) -> None:
        """Org A's receipt naming its ledger head (and the other partners' receipts)."""
        for d in self.cast.datasets:
            org = d.organisation.slug
            body = {
                "round": r.pk, "dataset": d.slug, "ticket_hash": self.tickets[(r.pk, d.slug)],
                "event": json.loads(LedgerEntry.objects.get(round_id=r.pk, dataset_slug=d.slug, kind="RESERVE").event),
                "local_ledger_head": head if d.slug == self.slug else "ab" * 32,
                "agent_public_key": self.keys[org].public_key().public_bytes_raw().hex(),
            }
            receipt_services.receipt_record(
                receipt=receipts.sign_receipt(body, self.keys[org]), organisation=org, public_key=body["agent_public_key"]
            )

    def commit(self, r: TrainingRound, *, tickets: bool = True) -> None:
        by_pk = {d.pk: self.tickets[(r.pk, d.slug)] for d in self.cast.datasets} if tickets else None
        services.budget_commit(round=r, actor=self.cast.admin, **({"ticket_hashes": by_pk} if by_pk else {}))

    def release(self, r: TrainingRound) -> None:
        set_status(r, TrainingRound.Status.ABORTED)
        services.budget_release(round=r, actor=self.cast.admin, reason="aborted before training", no_update_released=True)

    def export(self, name: str = "bundle.json") -> Path:
        path = self.tmp / name
        call_command("export_ledger", out=str(path), sign_pending=True)
        return path

    def run(self, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
        return run_without_django("federation.agent", "reconcile", "--state", str(self.state), "--bundle", str(bundle), *extra)


@pytest.fixture
def books(cast, tmp_path):
    return Books(cast, tmp_path)


def agreed(books: Books) -> list[TrainingRound]:
    """r1 trained and charged (receipted), r2 declined and released: books that agree."""
    r1, r2 = books.rounds(2)
    books.reserve(r1)
    head = books.local(r1, "commit")
    books.receipt(r1, head)
    books.commit(r1)
    books.reserve(r2)
    books.local(r2, "release")
    books.release(r2)
    return [r1, r2]


def test_books_that_agree_pass_round_by_round_without_django(books):
    agreed(books)
    result = books.run(books.export())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "org-a-records: coordinator charged 1 rounds" in result.stdout
    assert "this ledger committed 1; 2 agree" in result.stdout
    assert "the books agree" in result.stdout
    as_json = books.run(books.export("b2.json"), "--json")
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and data["ok"] is True and data["organisations"] == ["org-a"]
    assert data["datasets"]["org-a-records"]["agreeing"] == 2


def test_a_round_the_agent_committed_and_the_coordinator_released_is_an_under_charge(books):
    agreed(books)
    (r3,) = books.rounds(1)
    books.reserve(r3)
    books.local(r3, "commit")  # the masked input left this machine...
    books.release(r3)  # ...and the coordinator says nothing did: its budget forgets the release
    result = books.run(books.export())
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"MISMATCH: dataset org-a-records, round {r3.pk}: UNDER-CHARGED" in result.stdout
    assert "1 mismatch(es)" in result.stdout


def test_a_committed_round_missing_from_the_chain_is_an_under_charge_unless_committed_after_the_export(books):
    agreed(books)
    (r3,) = books.rounds(1)
    books.local(r3, "commit", event=books.event(books.cast.plan.rounds.order_by("pk").first()), ticket="cd" * 32)
    bundle = books.export()
    result = books.run(bundle)
    assert result.returncode == 1
    assert f"round {r3.pk}: UNDER-CHARGED: this agent committed the round before the export, and the coordinator's chain has no entry" in result.stdout
    # Back-dating the export to pass the round off as later is caught: the manifest signs it.
    older = books.tmp / "older.json"
    data = json.loads(bundle.read_text())
    data["exported_at"] = "2000-01-01T00:00:00+00:00"
    older.write_text(json.dumps(data))
    result = books.run(older)
    assert "does not verify" in result.stderr and result.returncode == 2  # the manifest signs exported_at: no back-dating


def test_a_round_committed_after_the_export_is_a_note(books):
    agreed(books)
    bundle = books.export()
    (r3,) = books.rounds(1)
    books.local(r3, "commit", event=books.event(books.cast.plan.rounds.order_by("pk").first()), ticket="cd" * 32)
    result = books.run(bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"NOTE: dataset org-a-records, round {r3.pk}: committed here after the bundle was exported" in result.stdout


def test_a_round_missing_below_a_later_round_of_the_chain_is_an_under_charge_whenever_it_was_committed(books):
    agreed(books)
    r3, r4 = books.rounds(2)
    books.reserve(r4)
    books.local(r4, "release")
    books.release(r4)
    bundle = books.export()
    books.local(r3, "commit", event=books.event(r4), ticket="cd" * 32)  # after the export, yet older than r4
    result = books.run(bundle)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"round {r3.pk}: UNDER-CHARGED: the coordinator's chain has no entry for the round, though it records a later one (round {r4.pk})" in result.stdout


def test_a_legacy_charge_for_a_round_the_agent_released_is_an_over_charge(books):
    (r0,) = books.rounds(1)
    books.reserve(r0)
    books.local(r0, "release")
    books.commit(r0, tickets=False)  # a COMMIT without a ticket: no receipt is asked for
    result = books.run(books.export())
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"round {r0.pk}: over-charged: the coordinator committed the round; this ledger released it" in result.stdout


def test_a_receipt_this_ledger_did_not_produce_is_named(books):
    r1, _ = agreed(books)
    (r3,) = books.rounds(1)
    books.reserve(r3)
    books.local(r3, "commit")
    books.receipt(r3, "ef" * 32)  # signed with org A's key, naming a head this ledger never had
    books.commit(r3)
    result = books.run(books.export())
    assert result.returncode == 1
    assert f"round {r3.pk}: the receipt signed with this agent's key names ledger head efefefefefefefef..., which is not an entry" in result.stdout
    assert f"round {r1.pk}:" not in result.stdout


def test_another_event_charged_than_the_agent_ran_is_named(books):
    (r1,) = books.rounds(1)
    books.reserve(r1)
    # The agent ran (and its ledger charged) twice the event the coordinator charged.
    bigger = {"class_name": "SelfComposedDpEvent", "module_name": "dp_accounting.dp_event", "count": 2, "event": books.event(r1)}
    head = books.local(r1, "commit", event=bigger)
    books.receipt(r1, head)
    books.commit(r1)
    result = books.run(books.export())
    assert result.returncode == 1
    assert f"round {r1.pk}: the coordinator charged another DP event than this agent ran" in result.stdout


@pytest.mark.parametrize("attack", ["other key pinned", "bundle edited", "ledger edited", "not enrolled", "no pin"])
def test_books_that_cannot_be_compared_are_refused_with_exit_2(books, attack):
    agreed(books)
    bundle = books.export()
    extra: tuple[str, ...] = ()
    if attack == "other key pinned":
        extra = ("--coordinator-key", Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex())
        want = "not the pinned"
    elif attack == "bundle edited":
        data = json.loads(bundle.read_text())
        chain = next(c for c in data["chains"] if c["dataset"] == books.slug)
        chain["entries"][-1]["epsilon_spent_after"] = 0.0
        bundle.write_text(json.dumps(data))
        want = "the bundle does not verify"
    elif attack == "ledger edited":
        path = books.state / LEDGER_FILE
        lines = path.read_text().splitlines()
        entry = json.loads(lines[-1])
        entry["payload"] = {"reason": "rewritten"}
        path.write_text("\n".join([*lines[:-1], json.dumps(entry)]) + "\n")
        want = "this agent's own ledger does not verify"
    elif attack == "not enrolled":
        fresh = Ed25519PrivateKey.generate()
        (books.state / "identity_ed25519.pem").write_bytes(
            fresh.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        want = "is not among the bundle's enrolled agents"
    else:
        (books.state / PINNED_KEY_FILE).unlink()
        want = "give --coordinator-key"
    result = books.run(bundle, *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    assert want in result.stderr, result.stderr
    assert result.stdout == ""


def test_rounds_recorded_under_the_server_url_are_matched_with_coordinator_and_json_names_each_mismatch(books):
    """An agent that pinned no key named the coordinator by its URL: without --coordinator its
    rounds are not this coordinator's (so the charge is unmatched); with it, they agree."""
    books.coordinator = "https://coordinator.example"
    (r1,) = books.rounds(1)
    books.reserve(r1)
    head = books.local(r1, "commit")
    books.receipt(r1, head)
    books.commit(r1)
    bundle = books.export()
    unmatched = books.run(bundle, "--json")
    data = json.loads(unmatched.stdout)
    assert unmatched.returncode == 1 and data["ok"] is False
    assert [(f["level"], f["round"]) for f in data["findings"]] == [("mismatch", r1.pk)]
    assert "never reserved the round" in data["findings"][0]["message"]
    matched = books.run(bundle, "--coordinator", books.coordinator)
    assert matched.returncode == 0, matched.stdout + matched.stderr


def test_dataset_limits_the_check_and_an_unknown_one_cannot_be_compared(books):
    agreed(books)
    bundle = books.export()
    assert books.run(bundle, "--dataset", books.slug).returncode == 0
    other = books.run(bundle, "--dataset", "org-b-records")  # not this agent's organisation's
    assert other.returncode == 2 and "no chain of organisation org-a in the bundle is named org-b-records" in other.stderr
