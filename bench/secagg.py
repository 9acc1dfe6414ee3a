"""Secure-aggregation benchmark: fedgov's protocol against the floor and Flower SecAgg+.

Run from the repository root:  python bench/secagg.py [--quick]

For n in {3, 10, 50} partners and d in {1e4, 1e6} (--quick: d = 1e4 only) it measures
  * client: SecAggClient.masked_input (decrypt shares, X25519 + HKDF per peer, self and
    pairwise masks, framing), median over the partners;
  * server: adding the n masked inputs into the running sum, and unmasking (Shamir
    reconstruction with exactly t shares + removing masks), without dropouts and with 20% of
    the partners dropping out after ShareKeys; and the server's peak traced memory
    (tracemalloc) over that whole path, which grows with d, not n*d;
next to the floor measured in the same process (X25519 + HKDF + AES-256-CTR keystream +
uint32 sums, as /work/shared/reference/plain_baseline.py; no Shamir, no framing) and, when
a Flower virtualenv exists (.venv-flwr, never in requirements), Flower 1.41's SecAgg+
primitives on the same n and d via /work/shared/reference/flwr_secaggplus_bench.py, run as a
subprocess. The tables go to stdout and to bench/results/secagg.md (--quick: secagg.quick.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cryptography  # noqa: E402
import numpy as np  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

from federation.secagg import RoundConfig, SecAggClient, SecAggServer, default_threshold  # noqa: E402
from federation.secagg.simulation import make_identities  # noqa: E402

FLWR_PYTHON = Path(os.environ.get("FEDGOV_FLWR_PYTHON", REPO / ".venv-flwr" / "bin" / "python"))
FLWR_SCRIPT = Path(os.environ.get("FEDGOV_FLWR_BENCH", "/work/shared/reference/flwr_secaggplus_bench.py"))
MiB = 1 << 20


# ----------------------------------------------------------------------------- floor


def _expand(seed: bytes, zeros: bytes) -> np.ndarray:
    enc = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    return np.frombuffer(enc.update(zeros), dtype=np.uint32)


def _hkdf(secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, b"mask").derive(secret)


def _best(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floor_times(n: int, d: int, k: int, reps: int) -> dict[str, float]:
    """The irreducible work: what the protocol computes, with nothing else around it."""
    sks = [X25519PrivateKey.generate() for _ in range(n)]
    pks = [s.public_key() for s in sks]
    zeros = bytes(4 * d)
    x = np.random.default_rng(0).integers(0, 2**22, d, dtype=np.uint32)
    vectors = [np.random.default_rng(i).integers(0, 2**32, d, dtype=np.uint32) for i in range(n)]
    seeds = [os.urandom(32) for _ in range(n)]

    def client():
        y = x + _expand(os.urandom(32), zeros)
        for j in range(1, n):
            m = _expand(_hkdf(sks[0].exchange(pks[j])), zeros)
            y += m  # the sign does not change the cost
        return y

    def server(survivors: int, dropouts: int):
        acc = vectors[0].copy()
        for v in vectors[1:survivors]:
            acc += v
        for s in seeds[:survivors]:
            acc -= _expand(s, zeros)
        for i in range(dropouts):
            for j in range(survivors):
                acc -= _expand(_hkdf(sks[n - 1 - i].exchange(pks[j])), zeros)
        return acc

    return {
        "client": _best(client, reps),
        "server": _best(lambda: server(n, 0), reps),
        "server_drop": _best(lambda: server(n - k, k), reps),
    }


def quantise_time(d: int, n: int, reps: int) -> float | None:
    """federation.learning's quantisation of a float32 update, when that module is present."""
    try:
        from federation.learning.quantise import QuantSpec, quantise
    except Exception:  # noqa: BLE001 -- another team's module; the bench runs without it
        return None
    spec = QuantSpec(clip=1.0, n_parties=n)
    u = (np.random.default_rng(0).standard_normal(d) * 0.1).astype(np.float32)
    return _best(lambda: quantise(u, spec), reps)


# ----------------------------------------------------------------------------- fedgov


def _reload_server(state: dict, acc: bytes) -> SecAggServer:
    return SecAggServer.from_dict(state, running_sum=acc)


def run_server(state, acc, bodies, dropped, unmask_answers, *, measure_memory=False):
    """One server pass from the start of MaskedInput: (timings and peak traced bytes, result).

    ``unmask_answers(request)`` returns the survivors' unmask responses; the clients' work
    is not server time, so it is excluded from the timings (and done before tracing starts
    when measuring memory, by caching the answers of the first pass).
    """
    survivors = [p for p in bodies if p not in dropped]
    if measure_memory:
        tracemalloc.start()  # before the restore: the running sum counts
    srv = _reload_server(state, acc)
    t_sum = 0.0
    for p in survivors:
        # As if read from the network: one body at a time exists in server memory.
        body = bytearray(bodies[p]) if measure_memory else bodies[p]
        t0 = time.perf_counter()
        srv.receive_masked_input(body)
        t_sum += time.perf_counter() - t0
        del body
    t1 = time.perf_counter()
    request = srv.close_masked_input()
    t_close = time.perf_counter() - t1
    responses = unmask_answers(request)
    t2 = time.perf_counter()
    for r in responses:
        srv.receive_unmask_response(r)
    t3 = time.perf_counter()
    result = srv.finalize()
    t4 = time.perf_counter()
    t_responses, t_finalize = t3 - t2 + t_close, t4 - t3
    peak = None
    if measure_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"sum": t_sum, "responses": t_responses, "finalize": t_finalize, "peak": peak, "result": result}


def bench_config(n: int, d: int, reps: int) -> dict:
    roster = tuple(f"org-{i:02d}" for i in range(n))
    cfg = RoundConfig(f"bench-{n}-{d}", roster, default_threshold(n), d)
    k = max(1, round(0.2 * n))
    dropped = set(roster[::5][:k]) if n >= 5 else {roster[0]}
    private, public = make_identities(roster)
    rng = np.random.default_rng(n)
    xs = {p: rng.integers(0, 2**22, d, dtype=np.uint32) for p in roster}
    clients = {p: SecAggClient(cfg, party=p, signing_key=private[p], identity_keys=public) for p in roster}
    srv = SecAggServer(cfg, identity_keys=public)

    t0 = time.perf_counter()
    adverts = [c.advertise_keys() for c in clients.values()]
    t_adv = (time.perf_counter() - t0) / n
    for a in adverts:
        srv.receive_advertise_keys(a)
    key_list = srv.close_advertise_keys()
    t0 = time.perf_counter()
    shares = [c.share_keys(key_list) for c in clients.values()]
    t_share = (time.perf_counter() - t0) / n
    for s in shares:
        srv.receive_share_keys(s)
    relays = srv.close_share_keys()
    state, acc = srv.to_dict(), srv.running_sum_bytes()

    # Client masking: one sample per partner; one partner re-run under tracemalloc for its peak.
    probe = roster[-1]
    probe_state = clients[probe].to_dict()
    bodies, mask_times, after_mask = {}, [], {}
    for p in roster:
        t0 = time.perf_counter()
        bodies[p] = clients[p].masked_input(relays[p], xs[p])
        mask_times.append(time.perf_counter() - t0)
        after_mask[p] = clients[p].to_dict()
    tracemalloc.start()
    SecAggClient.from_dict(probe_state, signing_key=private[probe]).masked_input(relays[probe], xs[probe])
    client_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    out = {"n": n, "d": d, "t": cfg.threshold, "k": k, "advertise_ms": t_adv * 1e3, "share_keys_ms": t_share * 1e3}
    out["client_ms"] = statistics.median(mask_times) * 1e3
    out["client_peak_mib"] = client_peak / MiB
    answers: dict[bytes, list[bytes]] = {}

    def unmask_answers(request: bytes) -> list[bytes]:
        if request not in answers:  # each client answers once: replay its answer on later passes
            survivors = json.loads(request)["survivors"]
            answers[request] = [SecAggClient.from_dict(after_mask[p], signing_key=private[p]).unmask(request) for p in survivors]
        return answers[request]

    for label, drop in (("nodrop", set()), ("drop", dropped)):
        runs = [run_server(state, acc, bodies, drop, unmask_answers) for _ in range(reps)]
        expected = np.zeros(d, dtype=np.uint32)
        for p in roster:
            if p not in drop:
                expected += xs[p]
        for r in runs:
            assert np.array_equal(r["result"].vector, expected), "wrong sum"
        mem = run_server(state, acc, bodies, drop, unmask_answers, measure_memory=True)
        for part in ("sum", "responses", "finalize"):
            out[f"{label}_{part}_ms"] = min(r[part] for r in runs) * 1e3
        out[f"{label}_unmask_ms"] = min(r["responses"] + r["finalize"] for r in runs) * 1e3
        out[f"{label}_total_ms"] = min(r["sum"] + r["responses"] + r["finalize"] for r in runs) * 1e3
        out[f"{label}_peak_mib"] = mem["peak"] / MiB
    floor = floor_times(n, d, k, reps)
    out["floor_client_ms"] = floor["client"] * 1e3
    out["floor_server_ms"] = floor["server"] * 1e3
    out["floor_server_drop_ms"] = floor["server_drop"] * 1e3
    q = quantise_time(d, n, reps)
    out["quantise_ms"] = None if q is None else q * 1e3
    return out


# ----------------------------------------------------------------------------- Flower


def flower_numbers(quick: bool) -> tuple[dict, str]:
    """{(n, d): {"client": ms, "sum": ms, "unmask": ms}} from the reference script, or ({}, why not)."""
    if not FLWR_PYTHON.exists():
        return {}, "flower: not installed"
    if not FLWR_SCRIPT.exists():
        return {}, f"flower: reference script {FLWR_SCRIPT} not found"
    cmd = [str(FLWR_PYTHON), str(FLWR_SCRIPT)] + (["--quick"] if quick else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return {}, f"flower: reference script failed ({exc})"
    version = re.search(r"^flwr (\S+)", proc.stdout, re.M)
    nums = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"n=(\d+) d=(\d+) num_shares=(\d+): (.*)", line)
        if not m or m.group(1) != m.group(3):  # keep the full-share runs (num_shares == n)
            continue
        fields = dict(re.findall(r"([^,=]+?)=([\d.]+)ms", m.group(4)))
        fields = {k.strip(): float(v) for k, v in fields.items()}
        nums[(int(m.group(1)), int(m.group(2)))] = {
            "client": fields["masked_vector/client (median)"],
            "sum": fields["server sum of n masked vecs"],
            "unmask": fields["server unmask total"],
        }
    return nums, f"flower: flwr {version.group(1) if version else '?'} ({' '.join(cmd)})"


# ----------------------------------------------------------------------------- report


def _f(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def machine_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from cryptography.hazmat.backends.openssl.backend import backend

    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
        f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"
    )


def render(rows: list[dict], flower: dict, flower_note: str, command: str, loads: list[str]) -> str:
    lines = [
        "# Secure aggregation benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Load average (1, 5, 15 min) {'; '.join(loads)} -- the machine is shared, expect noise  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}  ",
        f"{flower_note}",
        "",
        "Times in ms (server: best of the repetitions; client: median over the n partners).",
        "t = n//2 + 1. Floor = X25519 + HKDF + AES-256-CTR keystream + uint32 sums, measured in",
        "the same process. Flower = Flower SecAgg+ primitives (`flwr_secaggplus_bench.py`).",
        "",
        "## Client: masking one update (per partner)",
        "",
        "| n | d | fedgov mask | floor | fedgov/floor | quantise (learning) | Flower mask | Flower/fedgov | ShareKeys | peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fl = flower.get((r["n"], r["d"]), {})
        lines.append(
            f"| {r['n']} | {r['d']:.0e} | {_f(r['client_ms'])} | {_f(r['floor_client_ms'])} | "
            f"{_ratio(r['client_ms'], r['floor_client_ms'])} | {_f(r['quantise_ms'])} | {_f(fl.get('client'))} | "
            f"{_ratio(fl.get('client'), r['client_ms'])} | {_f(r['share_keys_ms'])} | {_f(r['client_peak_mib'])} |"
        )
    lines += [
        "",
        "## Server: sum of the masked inputs + unmasking",
        "",
        "`sum`: adding the n masked inputs into the running sum as they arrive; `resp`: closing",
        "MaskedInput and parsing the survivors' unmask responses as they arrive (n messages of n",
        "shares each); `final`: Shamir reconstruction with exactly t shares and removing the masks;",
        "`unmask` = resp + final, `total` = sum + unmask (what the floor is compared with).",
        "Dropouts: 20% of the partners after ShareKeys (their pairwise masks are rebuilt from",
        "their reconstructed masking keys). Peak MiB: tracemalloc over the whole server path;",
        "n*d*4 is what holding every input would take.",
        "",
        "| n | d | dropouts | sum | resp | final | unmask | total | floor | total/floor | Flower unmask "
        "| Flower/fedgov unmask | peak MiB | n*d*4 MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fl = flower.get((r["n"], r["d"]), {})
        for label, k, floor in (("nodrop", 0, r["floor_server_ms"]), ("drop", r["k"], r["floor_server_drop_ms"])):
            fu = fl.get("unmask") if k == 0 else None
            lines.append(
                f"| {r['n']} | {r['d']:.0e} | {k} | {_f(r[label + '_sum_ms'])} | {_f(r[label + '_responses_ms'])} | "
                f"{_f(r[label + '_finalize_ms'])} | {_f(r[label + '_unmask_ms'])} | "
                f"{_f(r[label + '_total_ms'])} | {_f(floor)} | {_ratio(r[label + '_total_ms'], floor)} | "
                f"{_f(fu)} | {_ratio(fu, r[label + '_unmask_ms'])} | {_f(r[label + '_peak_mib'])} | "
                f"{_f(r['n'] * r['d'] * 4 / MiB)} |"
            )
    lines += ["", "Flower's numbers exist only without dropouts (its reference script has none).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e4 only (seconds, not minutes)")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower reference run")
    args = parser.parse_args()
    ds = [10**4] if args.quick else [10**4, 10**6]
    loads = [f"at start {_load()}"]
    rows = []
    for d in ds:
        for n in (3, 10, 50):
            reps = 10 if d <= 10**4 else 3
            row = bench_config(n, d, reps)
            rows.append(row)
            print(
                f"n={n} d={d}: client {row['client_ms']:.1f} ms (floor {row['floor_client_ms']:.1f}), "
                f"server {row['nodrop_total_ms']:.1f} ms (floor {row['floor_server_ms']:.1f}), "
                f"with {row['k']} dropouts {row['drop_total_ms']:.1f} ms (floor {row['floor_server_drop_ms']:.1f})",
                flush=True,
            )
    if args.no_flower:
        flower, note = {}, "flower: skipped (--no-flower)"
    else:
        print("running the Flower reference (this takes a while)...", flush=True)
        loads.append(f"before Flower {_load()}")
        flower, note = flower_numbers(args.quick)
    loads.append(f"at end {_load()}")
    command = "python bench/secagg.py" + (" --quick" if args.quick else "") + (" --no-flower" if args.no_flower else "")
    report = render(rows, flower, note, command, loads)
    print(report)
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = "secagg.quick" if args.quick else "secagg"
    (results / f"{stem}.md").write_text(report)
    raw = [{**r} for r in rows]
    (results / f"{stem}.json").write_text(
        json.dumps({"rows": raw, "flower": {f"{n},{d}": v for (n, d), v in flower.items()}, "flower_note": note}, indent=1)
    )


if __name__ == "__main__":
    main()
