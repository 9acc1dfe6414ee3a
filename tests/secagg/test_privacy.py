"""What the coordinator sees is uniformly random; every round uses fresh keys and seeds;
the package stays free of Django."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from federation.secagg import crypto
from federation.secagg.messages import MAGIC

from .helpers import Harness

REPO = Path(__file__).resolve().parents[2]
# Chi-square with 255 degrees of freedom: mean 255, sd 22.6. 450 is ~8.6 sd out (p < 1e-9),
# so a truly uniform vector essentially never fails, and anything structured fails by far.
CHI2_LIMIT = 450.0


def _byte_chi2(raw: bytes) -> float:
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
    expected = len(raw) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def _vector(body: bytes) -> bytes:
    assert body[:4] == MAGIC
    hlen = int.from_bytes(body[5:7], "big")
    return body[7 + hlen :]


def test_the_chi_square_check_detects_a_non_uniform_vector():
    rng = np.random.default_rng(42)
    assert _byte_chi2(rng.integers(0, 2**32, 1 << 16, dtype=np.uint32).tobytes()) < CHI2_LIMIT
    quantised = rng.integers(0, 2**22, 1 << 16, dtype=np.uint32)  # what an unmasked update looks like
    assert _byte_chi2(quantised.tobytes()) > 10 * CHI2_LIMIT


def test_a_masked_input_of_zeros_is_uniform_and_so_is_the_running_sum_after_it():
    d = 1 << 16
    h = Harness(3, d=d).up_to("mask")
    zeros = np.zeros(d, dtype=np.uint32)
    body = h.clients["org-0"].masked_input(h.relays["org-0"], zeros)
    raw = _vector(body)
    assert _byte_chi2(raw) < CHI2_LIMIT
    h.server.receive_masked_input(body)
    # All the server holds of org-0's input is that masked vector, added into the running sum.
    assert h.server.running_sum_bytes() == bytes(raw)
    assert _byte_chi2(h.server.running_sum_bytes()) < CHI2_LIMIT


def test_the_running_sum_stays_uniform_until_unmasking_even_when_pairwise_masks_cancel():
    # Once every input has arrived the pairwise masks cancel in the running sum; what still
    # hides the inputs (here all zeros) until Unmasking are the self masks.
    d = 1 << 16
    h = Harness(3, t=2, d=d).up_to("mask")
    for p in h.roster:
        h.inputs[p] = np.zeros(d, dtype=np.uint32)
    h.mask()
    assert _byte_chi2(h.server.running_sum_bytes()) < CHI2_LIMIT
    h.close_mask()
    h.unmask()
    np.testing.assert_array_equal(h.server.finalize().vector, np.zeros(d, dtype=np.uint32))


def test_keys_and_seeds_are_fresh_in_every_round():
    first = Harness(3, round_id="round-1", d=256).up_to("mask")
    second = Harness(3, round_id="round-2", d=256).up_to("mask")
    a = first.clients["org-0"].to_dict()
    again = first.new_client("org-0").to_dict()  # same party, same identity, another round object
    for key in ("c_sk", "s_sk", "c_pk", "s_pk"):
        assert a[key] != again[key]
    b = second.clients["org-0"].to_dict()
    assert a["b"] != b["b"]
    x = np.zeros(256, dtype=np.uint32)
    y1 = first.clients["org-0"].masked_input(first.relays["org-0"], x)
    y2 = second.clients["org-0"].masked_input(second.relays["org-0"], x)
    assert _vector(y1) != _vector(y2)


def test_pairwise_seeds_bind_the_round_and_the_pair():
    sk_a, pk_a = crypto.x25519_generate()
    sk_b, pk_b = crypto.x25519_generate()
    s1 = crypto.mask_seed(sk_a, pk_b, round_id="round-1", a="org-a", b="org-b")
    assert s1 == crypto.mask_seed(sk_b, pk_a, round_id="round-1", a="org-b", b="org-a")  # both ends agree
    assert s1 != crypto.mask_seed(sk_a, pk_b, round_id="round-2", a="org-a", b="org-b")
    assert s1 != crypto.channel_key(sk_a, pk_b, round_id="round-1", a="org-a", b="org-b")
    assert len(s1) == 32


def test_the_secagg_package_imports_no_django_celery_or_rest_framework():
    code = (
        "import sys, federation.secagg, federation.secagg.simulation;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'celery'));"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
