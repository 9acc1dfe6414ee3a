"""`python -m accounting.verify`, the auditor's verifier: no Django, DRF or Celery; the same
verdict as `manage.py verify_ledger --bundle`; a pinned coordinator key (docs/TRUST-FORMATS.md)."""

import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command

from accounting import chain, manifest
from accounting import heads as ledger_heads
from tests.accounting.receipting import ROOT, both_fail, pinned, run_cli

pytestmark = pytest.mark.django_db


def test_the_verifier_imports_without_django_drf_or_celery():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('django', 'rest_framework', 'celery'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import accounting.verify, accounting.bundle, accounting.receipts, accounting.chain\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'celery')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_real_bundle_verifies_as_a_module_with_a_pinned_key(receipted, tmp_path):
    fingerprint = manifest.fingerprint(ledger_heads.key_id())
    # Exactly as an auditor types it (python -m), key given inline as hex ...
    result = subprocess.run(
        [sys.executable, "-m", "accounting.verify", str(receipted.path), "--public-key", pinned()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"coordinator key {fingerprint} ({ledger_heads.key_id()}) (pinned)" in result.stdout
    assert "org-b-records: " in result.stdout and "3 receipts verified" in result.stdout
    assert "bundle verifies" in result.stdout
    # ... and as a PEM file, with Django made unimportable.
    pem = tmp_path / "coordinator.pem"
    pem.write_text(ledger_heads.public_key_pem())
    blocked = run_cli(str(receipted.path), "--public-key", str(pem), "--dataset", "org-c-records")
    assert blocked.returncode == 0, blocked.stderr
    assert "org-c-records: " in blocked.stdout and "org-a-records" not in blocked.stdout


def test_without_a_pinned_key_both_refuse_unless_told_to_trust_the_bundle(receipted, capsys):
    fingerprint = manifest.fingerprint(ledger_heads.key_id())
    with pytest.raises(CommandError, match="refusing to verify against the key inside the bundle") as excinfo:
        call_command("verify_ledger", bundle=str(receipted.path))
    assert excinfo.value.returncode == 2 and fingerprint in str(excinfo.value)
    result = run_cli(str(receipted.path))
    assert result.returncode == 2 and "--trust-bundle-key" in result.stderr and fingerprint in result.stderr
    call_command("verify_ledger", bundle=str(receipted.path), trust_bundle_key=True)
    assert "trusted from the bundle, not pinned" in capsys.readouterr().out
    result = run_cli(str(receipted.path), "--trust-bundle-key")
    assert result.returncode == 0 and "trusted from the bundle, not pinned" in result.stdout


def test_a_bundle_with_no_chains_fails(receipted, tmp_path):
    data = receipted.data()
    data["chains"] = []
    both_fail(data, tmp_path, "the bundle holds no chains")


def test_a_dataset_matching_nothing_fails(receipted, tmp_path):
    both_fail(None, tmp_path, "no chain of the bundle is named nope", path=receipted.path, extra=("--dataset", "nope"))


def test_a_chain_re_hashed_and_re_signed_with_another_key_fails_against_the_pinned_key(receipted, tmp_path):
    data = receipted.data()
    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes_raw()
    kid = manifest.key_id_of(raw)
    data["public_key"] = {"algorithm": "Ed25519", "hex": raw.hex(), "key_id": kid}
    # The tickets name the RESERVE entries' hashes and carry the coordinator's signature: a
    # forger without its key drops them (and the agreements), as in a bundle exported before them.
    data.pop("agreements")
    for c in data["chains"]:
        c.pop("tickets")
        prev = chain.GENESIS_HASH
        for e in c["entries"]:
            e["actor"] = "rewritten"
            e["prev_hash"] = prev
            e["entry_hash"] = chain.compute_entry_hash(e)
            prev = e["entry_hash"]
        by_seq = {e["seq"]: e["entry_hash"] for e in c["entries"]}
        for h in c["signed_heads"]:
            h["key_id"], h["head_hash"] = kid, by_seq[h["seq"]]
            h["signature"] = other.sign(
                manifest.head_message(
                    dataset=h["dataset"], seq=h["seq"], head_hash=h["head_hash"], key_id=kid, signed_at=h["signed_at"]
                )
            ).hex()
    m = data["manifest"]
    heads = {c["dataset"]: c["signed_heads"][-1]["head_hash"] for c in data["chains"]}
    data["manifest"] = manifest.sign_manifest(
        private_key=other, key_id=kid, exported_at=m["exported_at"], agents=m["agents"],
        chains=[{**line, "head_hash": heads[line["dataset"]]} for line in m["chains"]],
    )
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    # Self-consistent: trusting the bundle's own key, it passes (which is why pinning matters),
    # but says its tickets went unchecked ...
    result = run_cli(str(forged), "--trust-bundle-key")
    assert result.returncode == 0, result.stderr
    assert "no tickets in bundle" in result.stderr
    # ... against the pinned coordinator key, both verifiers refuse it.
    both_fail(None, tmp_path, f"not the pinned {manifest.fingerprint(ledger_heads.key_id())}", path=forged)


def test_since_through_the_module(receipted, tmp_path):
    result = run_cli(str(receipted.path), "--since", str(receipted.path), "--public-key", pinned())
    assert result.returncode == 0, result.stderr
    assert "extends the old head" in result.stdout


def test_an_unreadable_pinned_key_is_a_usage_error(receipted, tmp_path):
    bad = tmp_path / "key.txt"
    bad.write_text("not a key")
    result = run_cli(str(receipted.path), "--public-key", str(bad))
    assert result.returncode == 2 and "neither a PEM public key nor 64 hex digits" in result.stderr
