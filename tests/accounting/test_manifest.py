"""The bundle's manifest: the coordinator signs the agent keys and each chain's organisation
and head at export, so whoever rewrites a bundle cannot swap in their own agent key and forge
receipts; an auditor may pin the agent keys themselves (--agent-keys). the README, "Partners need not trust the coordinator"."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command

from accounting import heads, manifest
from accounting.models import LedgerEntry, SignedHead
from tests.accounting.receipting import both_fail, pinned, run_cli

pytestmark = pytest.mark.django_db


def _hex(key) -> str:
    return key.public_key().public_bytes_raw().hex()


def _swap_in(data: dict, mallory, org: str = "org-a") -> None:
    """Replace org's agent key by mallory's and re-sign org's receipts with it: what a
    bundle rewriter would do to forge receipts."""
    from accounting import receipts

    for a in data["agents"]:
        if a["organisation"] == org:
            a["public_key"] = _hex(mallory)
    for c in data["chains"]:
        if c["organisation"] == org:
            c["receipts"] = [receipts.sign_receipt({**r, "agent_public_key": _hex(mallory)}, mallory) for r in c["receipts"]]


def test_export_signs_the_agents_and_the_chains_organisations_and_heads_and_writes_nothing(receipted, tmp_path):
    data = receipted.data()
    m = data["manifest"]
    assert m["type"] == manifest.MANIFEST_TYPE and m["key_id"] == heads.key_id() and m["agents"] == data["agents"]
    assert [(line["dataset"], line["organisation"], line["head_seq"], line["head_hash"]) for line in m["chains"]] == [
        (c["dataset"], c["organisation"], c["signed_heads"][-1]["seq"], c["signed_heads"][-1]["head_hash"]) for c in data["chains"]
    ]
    before = (LedgerEntry.objects.count(), SignedHead.objects.count())
    call_command("export_ledger", out=str(tmp_path / "again.json"))
    assert (LedgerEntry.objects.count(), SignedHead.objects.count()) == before  # signing a manifest is not a ledger head


def test_an_agent_key_swapped_in_the_bundle_fails_both_verifiers_naming_it(receipted, tmp_path):
    data = receipted.data()
    mallory = Ed25519PrivateKey.generate()
    _swap_in(data, mallory)
    both_fail(data, tmp_path, f"agents: key {_hex(mallory)[:16]}... of organisation org-a is not in the coordinator's signed manifest")
    # Editing the manifest to match breaks the coordinator's signature.
    data["manifest"]["agents"] = data["agents"]
    both_fail(data, tmp_path, "manifest: the coordinator's signature does not verify")
    # Dropping (or renaming) the manifest leaves the receipts unauthenticated: refused.
    del data["manifest"]
    both_fail(data, tmp_path, "dataset org-a-records: the bundle has no coordinator-signed manifest")
    data["manifesto"] = receipted.data()["manifest"]
    both_fail(data, tmp_path, "unknown bundle keys ['manifesto']")


def test_a_chain_moved_to_another_organisation_fails(receipted, tmp_path):
    data = receipted.data()
    data["chains"][0]["organisation"] = "org-b"  # then org-b's key would be accepted for org-a's chain
    both_fail(data, tmp_path, "dataset org-a-records: the chain names organisation 'org-b', the coordinator's signed manifest 'org-a'")


def test_pinned_agent_keys_pass_and_catch_a_coordinator_that_swaps_keys_and_re_signs(receipted, tmp_path):
    pins = tmp_path / "agents.json"
    pins.write_text(json.dumps({org: [_hex(k)] for org, k in receipted.keys.items()}))
    result = run_cli(str(receipted.path), "--public-key", pinned(), "--agent-keys", str(pins))
    assert result.returncode == 0, result.stderr
    assert "agent keys pinned from" in result.stdout and "bundle verifies" in result.stdout
    # A compromised coordinator swaps org-a's key and signs a fresh manifest with its own key.
    data = receipted.data()
    mallory = Ed25519PrivateKey.generate()
    _swap_in(data, mallory)
    m = data["manifest"]
    data["manifest"] = manifest.sign_manifest(
        private_key=heads.signing_key(), key_id=m["key_id"], exported_at=m["exported_at"], agents=data["agents"], chains=m["chains"],
        digests=m.get("digests"),
    )
    run = run_cli  # the bundle's own view is consistent: without pins it passes ...
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data))
    assert run(str(path), "--public-key", pinned()).returncode == 0
    # ... but not against the auditor's pins.
    both_fail(
        data, tmp_path, f"the receipt is signed by key {_hex(mallory)[:16]}..., not one pinned (--agent-keys) for organisation org-a",
        extra=("--agent-keys", str(pins)),
    )
    # An organisation the auditor pinned nothing for is not checked on the bundle's word.
    pins.write_text(json.dumps({"org-b": [_hex(receipted.keys["org-b"])]}))
    both_fail(None, tmp_path, "organisation org-a has no agent keys pinned (--agent-keys)", path=receipted.path, extra=("--agent-keys", str(pins)))


def test_a_bad_agent_keys_file_is_a_usage_error(receipted, tmp_path):
    pins = tmp_path / "agents.json"
    pins.write_text(json.dumps({"org-a": ["nothex"]}))
    result = run_cli(str(receipted.path), "--public-key", pinned(), "--agent-keys", str(pins))
    assert result.returncode == 2 and "must be a list of 64 lowercase hex digits" in result.stderr


def test_a_chain_cut_back_under_a_fresh_head_fails_against_the_manifest(receipted, tmp_path):
    """The manifest binds each chain's head at export: a bundle whose chain is cut back (its
    last entries dropped) under a head signed for the shorter chain does not pass."""
    data = receipted.data()
    c = data["chains"][0]
    seq = max(e["seq"] for e in c["entries"] if e["kind"] == "RESERVE")  # before the last round's COMMIT
    c["entries"] = c["entries"][:seq]
    c["receipts"] = [r for r in c["receipts"] if r["round"] != c["entries"][-1]["round"]]
    head = {**c["signed_heads"][-1], "seq": seq, "head_hash": c["entries"][-1]["entry_hash"]}
    head["signature"] = heads.signing_key().sign(
        manifest.head_message(dataset=head["dataset"], seq=seq, head_hash=head["head_hash"], key_id=head["key_id"], signed_at=head["signed_at"])
    ).hex()
    c["signed_heads"] = [h for h in c["signed_heads"] if h["seq"] < seq] + [head]
    last = data["manifest"]["chains"][0]["head_seq"]
    both_fail(data, tmp_path, f"dataset org-a-records: the chain ends at entry #{seq} ({head['head_hash'][:16]}...), "
              f"the coordinator's signed manifest at #{last}")
