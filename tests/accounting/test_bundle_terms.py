"""The round tickets and agreement terms in the audit bundle, checked offline
(docs/TRUST-FORMATS.md, "Tickets and terms in the bundle"): the auditor checks the
coordinator's signed tickets against its ledger, the terms the parties signed and the
partners' receipts, without the coordinator's stack.

Each attack edits an exported bundle the way a careless or dishonest coordinator (or anyone
between it and the auditor) could; where the manifest would catch the edit first, the
bundle is re-signed with the coordinator's own key, so that the check under test is the one
that fires."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command

from accounting import bundle, chain, heads, manifest, receipts, terms_check
from accounting.services import budget as services
from federation.agent import trust
from federation.models import Agreement
from federation.services.agreements import agreement_amend, agreement_sign
from tests.accounting.helpers import make_rounds
from tests.accounting.receipting import Receipted, both_fail, enrol_agents, pinned, record, run_cli, ticket_hash_for

pytestmark = pytest.mark.django_db


def resign(data: dict, *, digests: bool = True) -> dict:
    """The manifest signed again with the coordinator's key over the bundle as it now is."""
    m = data["manifest"]
    covered = None
    if digests:
        covered = {
            "agreements": manifest.sha256_hex(data["agreements"]),
            "tickets": {c["dataset"]: manifest.sha256_hex(c["tickets"]) for c in data["chains"]},
        }
    data["manifest"] = manifest.sign_manifest(
        private_key=heads.signing_key(), key_id=m["key_id"], exported_at=m["exported_at"], agents=m["agents"], chains=m["chains"],
        digests=covered,
    )  # fmt: skip
    return data


def chain_of(data: dict, slug: str) -> dict:
    return next(c for c in data["chains"] if c["dataset"] == slug)


def ticket_index(data: dict, slug: str, round_id: int) -> int:
    return next(i for i, t in enumerate(chain_of(data, slug)["tickets"]) if t["round"] == round_id)


def commit_seq(data: dict, slug: str, round_id: int) -> int:
    return next(e["seq"] for e in chain_of(data, slug)["entries"] if e["kind"] == "COMMIT" and e["round"] == round_id)


def fails(data: dict, match: str) -> None:
    with pytest.raises(manifest.BundleError) as excinfo:
        bundle.verify(data, pinned_key_id=heads.key_id())
    assert match in str(excinfo.value), str(excinfo.value)


# --- what the export carries ----------------------------------------------------------------------


def test_the_bundle_carries_every_committed_round_s_signed_ticket_and_the_terms_the_parties_signed(receipted, cast):
    data = receipted.data()
    r1, r2, r3, _ = receipted.rounds
    agreement = cast.agreement
    for c in data["chains"]:
        assert [t["round"] for t in c["tickets"]] == [r1.pk, r2.pk, r3.pk]  # r4 was released: no ticket
        for t in c["tickets"]:
            assert terms_check.ticket_hash(t) == receipted.tickets[(t["round"], c["dataset"])]
    (entry,) = data["agreements"]
    assert (entry["agreement_id"], entry["version"]) == (agreement.pk, 1)
    assert entry["terms"] == json.loads(agreement.canonical_terms())
    assert manifest.sha256_hex(entry["terms"]) == agreement.terms_hash
    assert sorted(s["organisation"] for s in entry["signatures"]) == ["org-a", "org-b", "org-c"]
    assert {s["terms_hash"] for s in entry["signatures"]} == {agreement.terms_hash}
    assert set(data["manifest"]["digests"]["tickets"]) == {"org-a-records", "org-b-records", "org-c-records"}
    report = bundle.verify(data, pinned_key_id=heads.key_id())
    assert all(c.tickets == 3 for c in report.chains) and report.warnings() == []
    result = run_cli(str(receipted.path), "--public-key", pinned())  # the auditor's verifier, Django unimportable
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("3 tickets checked against their signed terms") == 3
    assert "no tickets in bundle" not in result.stderr


def test_the_verifier_reads_tickets_in_the_format_the_ticket_code_signs():
    # One definition (accounting/tickets.py) for the coordinator, the agent and the verifier.
    assert terms_check.TICKET_FIELDS is trust.TICKET_FIELDS
    ticket = {name: 1 for name in trust.TICKET_FIELDS}
    assert terms_check.ticket_message(ticket) == trust.ticket_message(ticket)
    assert terms_check.ticket_hash(ticket) == trust.ticket_hash(ticket)


# --- the tickets ------------------------------------------------------------------------------------


def test_a_ticket_edited_after_signing_fails(receipted, tmp_path):
    data = receipted.data()
    r1 = receipted.rounds[0]
    chain_of(data, "org-a-records")["tickets"][ticket_index(data, "org-a-records", r1.pk)]["z"] = 0.5
    both_fail(
        resign(data), tmp_path,
        f"dataset org-a-records: the ticket of round {r1.pk}: the coordinator's signature does not verify (edited after signing",
    )  # fmt: skip


def test_a_ticket_re_signed_with_another_key_fails(receipted):
    data = receipted.data()
    r1 = receipted.rounds[0]
    tickets = chain_of(data, "org-a-records")["tickets"]
    i = ticket_index(data, "org-a-records", r1.pk)
    other = Ed25519PrivateKey.generate()
    tickets[i] = trust.ticket_sign({**tickets[i], "z": 0.5}, other)
    fails(resign(data), f"the ticket of round {r1.pk}: the coordinator's signature does not verify")
    kid = trust.key_id(other.public_key().public_bytes_raw())
    tickets[i] = trust.ticket_sign({**tickets[i], "key_id": kid}, other)
    fails(resign(data), f"the ticket of round {r1.pk} names signing key {kid[:16]}..., not the coordinator's")


def test_a_ticket_the_coordinator_re_signed_after_an_edit_is_not_the_one_its_ledger_committed(receipted, tmp_path):
    data = receipted.data()
    r1 = receipted.rounds[0]
    tickets = chain_of(data, "org-a-records")["tickets"]
    i = ticket_index(data, "org-a-records", r1.pk)
    tickets[i] = trust.ticket_sign({**tickets[i], "z": 0.5}, heads.signing_key())
    seq = commit_seq(data, "org-a-records", r1.pk)
    both_fail(resign(data), tmp_path, f"entry #{seq} (COMMIT of round {r1.pk}): the round's ticket hashes to")


def test_a_ticket_swapped_between_rounds_fails(receipted):
    data = receipted.data()
    r1, r2 = receipted.rounds[:2]
    tickets = chain_of(data, "org-a-records")["tickets"]
    tickets[ticket_index(data, "org-a-records", r1.pk)] = dict(tickets[ticket_index(data, "org-a-records", r2.pk)])
    fails(resign(data), f"the ticket of round {r2.pk}: a second ticket for the round")


def test_a_ticket_swapped_between_datasets_fails(receipted, tmp_path):
    data = receipted.data()
    r1 = receipted.rounds[0]
    chain_of(data, "org-a-records")["tickets"][ticket_index(data, "org-a-records", r1.pk)] = chain_of(data, "org-b-records")[
        "tickets"
    ][ticket_index(data, "org-b-records", r1.pk)]
    both_fail(
        resign(data), tmp_path,
        f"the ticket of round {r1.pk} names dataset 'org-b-records' of organisation 'org-b': another chain's ticket",
    )  # fmt: skip


def test_a_removed_ticket_fails(receipted, tmp_path):
    data = receipted.data()
    r2 = receipted.rounds[1]
    del chain_of(data, "org-c-records")["tickets"][ticket_index(data, "org-c-records", r2.pk)]
    seq = commit_seq(data, "org-c-records", r2.pk)
    # Behind the coordinator's back, the manifest gives it away ...
    fails(json.loads(json.dumps(data)), "dataset org-c-records: its tickets differ from what the coordinator's signed manifest covers")
    # ... and with the manifest re-signed, the COMMIT still names a ticket the bundle lacks.
    both_fail(resign(data), tmp_path, f"dataset org-c-records: entry #{seq} (COMMIT of round {r2.pk}): no ticket in the bundle for the round")


# --- the terms --------------------------------------------------------------------------------------


def test_terms_edited_after_the_parties_signed_them_fail(receipted, tmp_path, cast):
    data = receipted.data()
    r1 = receipted.rounds[0]
    entry = data["agreements"][0]
    entry["terms"]["min_noise_multiplier"] = 0.1
    edited = manifest.sha256_hex(entry["terms"])
    # The coordinator's own record of the signatures names the hash the parties signed ...
    fails(resign(data), "org-a's recorded signature names terms hash")
    # ... and with those records rewritten too, the signed tickets still name the real terms.
    for s in entry["signatures"]:
        s["terms_hash"] = edited
    seq = commit_seq(data, "org-a-records", r1.pk)
    both_fail(
        resign(data), tmp_path,
        f"entry #{seq} (COMMIT of round {r1.pk}): the terms of agreement {cast.agreement.pk} v1 in the bundle hash to "
        f"{edited[:16]}..., the signed ticket names {cast.agreement.terms_hash[:16]}...: not the terms the round ran under",
    )  # fmt: skip


def test_terms_an_organisation_never_signed_fail(receipted, cast):
    data = receipted.data()
    r1 = receipted.rounds[0]
    entry = data["agreements"][0]
    entry["signatures"] = [s for s in entry["signatures"] if s["organisation"] != "org-b"]
    fails(
        resign(data),
        f"entry #{commit_seq(data, 'org-b-records', r1.pk)} (COMMIT of round {r1.pk}): the coordinator recorded no signature "
        f"of agreement {cast.agreement.pk} v1 by organisation org-b",
    )


def test_missing_terms_fail(receipted, cast):
    data = receipted.data()
    data["agreements"] = []
    fails(resign(data), f"the terms of agreement {cast.agreement.pk} v1, which the ticket names, are not in the bundle")


def test_a_round_run_outside_the_amended_terms_fails_and_the_earlier_version_s_terms_are_recovered(cast, tmp_path):
    """A coordinator that skips its own governance checks: round r1 runs under v1 of the terms,
    the parties sign v2 raising the noise floor above the plan's z = 1.1, and round r2 is still
    reserved, ticketed, receipted and committed with z = 1.1. Every signature is real."""
    h = Receipted(cast=cast, keys=enrol_agents(cast), rounds=make_rounds(cast.plan, 2))
    r1, r2 = h.rounds

    def charge(r):
        for e in services.budget_reserve(round=r, actor=cast.admin):
            h.tickets[(r.pk, e.dataset_slug)] = ticket_hash_for(e)
        for d in cast.datasets:
            record(h, r.pk, d.slug)
        services.budget_commit(round=r, actor=cast.admin, ticket_hashes={d.pk: h.tickets[(r.pk, d.slug)] for d in cast.datasets})

    charge(r1)
    v1_hash = cast.agreement.terms_hash
    agreement = agreement_amend(actor=cast.admin, agreement=cast.agreement, min_noise_multiplier=1.5)
    for org, rep in ((cast.org_a, cast.rep_a), (cast.org_b, cast.rep_b), (cast.org_c, cast.rep_c)):
        agreement_sign(actor=rep, agreement=agreement, organisation=org, terms_hash=agreement.terms_hash)
    assert Agreement.objects.get(pk=agreement.pk).version == 2
    charge(r2)
    path = tmp_path / "bundle.json"
    call_command("export_ledger", out=str(path), sign_pending=True)
    data = bundle.load(str(path))
    by_version = {a["version"]: a for a in data["agreements"]}
    assert sorted(by_version) == [1, 2]
    # v1 is no longer on the agreement's row: its terms come from the governance events.
    assert manifest.sha256_hex(by_version[1]["terms"]) == v1_hash
    assert by_version[1]["terms"]["min_noise_multiplier"] == 0.8
    assert manifest.sha256_hex(by_version[2]["terms"]) == agreement.terms_hash
    seq = commit_seq(data, "org-a-records", r2.pk)
    both_fail(
        None, tmp_path,
        f"dataset org-a-records: entry #{seq} (COMMIT of round {r2.pk}): the round's parameters are outside the signed terms "
        f"of agreement {agreement.pk} v2: noise multiplier z=1.1 < floor 1.5",
        path=path,
    )  # fmt: skip


# --- the manifest and older bundles -----------------------------------------------------------------


def test_the_manifest_covers_the_tickets_and_the_terms(receipted, tmp_path):
    data = receipted.data()
    data["agreements"][0]["terms"]["max_clip_norm"] = 100.0
    fails(data, "agreements: they differ from what the coordinator's signed manifest covers")
    data = receipted.data()
    chain_of(data, "org-b-records")["tickets"].append(chain_of(data, "org-b-records")["tickets"][0])
    fails(data, "dataset org-b-records: its tickets differ from what the coordinator's signed manifest covers")
    # Dropping both sections to pass as an older bundle breaks the coordinator's signature ...
    data = receipted.data()
    del data["agreements"]
    for c in data["chains"]:
        del c["tickets"]
    both_fail(data, tmp_path, "manifest: it signs the digests of agreements and tickets the bundle lacks")
    # ... and sections a manifest does not cover are refused.
    data = resign(receipted.data(), digests=False)
    fails(data, "manifest: the bundle carries agreements and tickets its signed manifest does not cover")


def test_an_older_bundle_without_tickets_still_verifies_with_a_warning(receipted, tmp_path):
    data = receipted.data()
    del data["agreements"]
    for c in data["chains"]:
        del c["tickets"]
    path = tmp_path / "older.json"
    path.write_text(json.dumps(resign(data, digests=False)))
    result = run_cli(str(path), "--public-key", pinned())
    assert result.returncode == 0, result.stderr
    assert (
        "warning: org-a-records: no tickets in bundle (exported before they were): 3 committed rounds' tickets, terms and DP "
        "parameters unchecked"
    ) in result.stderr
    assert "tickets checked" not in result.stdout
    # The coordinator holds the key, so it could export such a bundle today to hide its
    # tickets: an auditor who expects them requires them, in both verifiers.
    strict = run_cli(str(path), "--public-key", pinned(), "--require-tickets")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "tickets required (--require-tickets): dataset org-a-records: 3 committed rounds name tickets the bundle does not carry" in strict.stderr
    both_fail(None, tmp_path, "tickets required (--require-tickets)", path=path, extra=("--require-tickets",))
    assert run_cli(str(receipted.path), "--public-key", pinned(), "--require-tickets").returncode == 0


def test_unknown_fields_in_the_new_sections_are_refused(receipted):
    data = receipted.data()
    data["agreements"][0]["note"] = "trust me"
    fails(resign(data), "an agreement must have exactly agreement_id, version, terms and signatures")
    data = receipted.data()
    data["agreements"][0]["terms"]["parties"] = "org-a org-b org-c"  # not a substring test
    fails(resign(data), "the terms' parties must be a list of organisation slugs")
    data = receipted.data()
    chain_of(data, "org-a-records")["tickets"][0]["extra"] = 1
    fails(resign(data), "dataset org-a-records: ticket 1: its fields differ from the ticket format")


# --- consistent forgeries: everything re-signed, so that the check of the content fires -------------


def forge(h: Receipted, data: dict, slug: str, round_id: int, *, ticket: dict | None = None, terms: dict | None = None) -> dict:
    """What only the coordinator and the partners together could produce: the ticket of
    (`slug`, `round_id`) changed by `ticket` (and the terms by `terms`, their signing records
    following) and re-signed with the coordinator's key, the COMMIT naming its new hash, the
    chain re-hashed from there and its heads re-signed, the partner's receipt naming the new
    hash re-signed with the partner's key, and the manifest re-signed."""
    changes = dict(ticket or {})
    if terms:
        entry = data["agreements"][0]
        entry["terms"].update(terms)
        changes["terms_hash"] = manifest.sha256_hex(entry["terms"])
        for s in entry["signatures"]:
            s["terms_hash"] = changes["terms_hash"]
    c = chain_of(data, slug)
    i = ticket_index(data, slug, round_id)
    c["tickets"][i] = trust.ticket_sign({**c["tickets"][i], **changes}, heads.signing_key())
    new_hash = terms_check.ticket_hash(c["tickets"][i])
    seq = commit_seq(data, slug, round_id)
    prev = c["entries"][seq - 2]["entry_hash"]
    for e in c["entries"][seq - 1 :]:
        if e["seq"] == seq:
            e["payload"]["ticket_hash"] = new_hash
        e["prev_hash"] = prev
        e["entry_hash"] = prev = chain.compute_entry_hash(e)
    by_seq = {e["seq"]: e["entry_hash"] for e in c["entries"]}
    for head in c["signed_heads"]:
        head["head_hash"] = by_seq[head["seq"]]
        head["signature"] = heads.signing_key().sign(manifest.head_message(
            dataset=slug, seq=head["seq"], head_hash=head["head_hash"], key_id=head["key_id"], signed_at=head["signed_at"]
        )).hex()  # fmt: skip
    for line in data["manifest"]["chains"]:
        if line["dataset"] == slug:
            line["head_hash"] = by_seq[line["head_seq"]]
    org = slug.rsplit("-records", 1)[0]
    for k, r in enumerate(c["receipts"]):
        if r["round"] == round_id:
            c["receipts"][k] = receipts.sign_receipt({**r, "ticket_hash": new_hash}, h.keys[org])
    return resign(data)


def test_the_forgery_alone_changes_nothing_the_verifier_checks(receipted):
    """The forge below is sound: re-signing everything with no change still verifies, so each
    forged test fails on its change, not on the forging."""
    data = receipted.data()
    r1 = receipted.rounds[0]
    forged = forge(receipted, data, "org-a-records", r1.pk, ticket={"records": 401})  # a field no check reads
    assert chain_of(forged, "org-a-records")["entries"] != chain_of(receipted.data(), "org-a-records")["entries"]
    report = bundle.verify(forged, pinned_key_id=heads.key_id())
    assert report.chains[0].tickets == 3


@pytest.mark.parametrize(
    ("ticket", "terms", "problem"),
    [
        ({"reserve_entry_hash": "00" * 32}, None, "the ticket names RESERVE 0000000000000000..., not entry #"),
        ({"z": 0.9}, None, "the ticket's event is not the event of its q, z, K and evaluation"),
        ({"event": {"module_name": "x"}}, None, "the ticket's event differs from the event charged"),
        ({"delta": 1e-6}, None, "the ticket's delta and accountant 1e-06, 'rdp' differ from the RESERVE's"),
        ({"C": 3.0}, None, "the round's parameters are outside the signed terms of agreement {pk} v1: clip norm C=3.0 > ceiling 2.0"),
        ({"issued_at": "2001-01-01T00:00:00.000000+00:00"}, None, "the round's parameters are outside the signed terms of agreement {pk} v1: issued on 2001-01-01"),
        (None, {"min_noise_multiplier": 1.2}, "the round's parameters are outside the signed terms of agreement {pk} v1: noise multiplier z=1.1 < floor 1.2"),
        (None, {"max_delta": 1e-6}, "the round's parameters are outside the signed terms of agreement {pk} v1: delta 1e-05 > ceiling 1e-06"),
        (None, {"max_epsilon_per_round": 0.01}, "the round's parameters are outside the signed terms of agreement {pk} v1: one round costs epsilon"),
        (None, {"parties": ["org-b", "org-c"]}, "organisation org-a is not a party to agreement {pk} v1"),
    ],
    ids=["reserve", "event-of-parameters", "event", "delta", "clip", "dates", "noise-floor", "max-delta", "epsilon", "party"],
)
def test_a_ticket_the_coordinator_signed_outside_its_ledger_or_its_terms_fails(receipted, cast, ticket, terms, problem):
    data = receipted.data()
    r1 = receipted.rounds[0]
    seq = commit_seq(data, "org-a-records", r1.pk)
    fails(
        forge(receipted, data, "org-a-records", r1.pk, ticket=ticket, terms=terms),
        f"dataset org-a-records: entry #{seq} (COMMIT of round {r1.pk}): " + problem.format(pk=cast.agreement.pk),
    )
