"""The partner's own privacy ledger (federation/agent/ledger.py, docs/PARTNER-LEDGER.md)."""

from __future__ import annotations

import ast
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from accounting import accountant as acc
from accounting import chain, dp_events
from federation.agent import __main__ as agent_cli
from federation.agent import ledger_format as pl
from federation.agent.ledger import PartnerLedger
from federation.agent.ledger_errors import (
    LedgerCorrupt,
    LedgerError,
    LedgerLocked,
    LocalBudgetExceeded,
    LocalBudgetUnset,
    ReleaseRefused,
    RoundAlreadyReserved,
    UnknownRound,
)
from federation.agent.ledger_format import RoundKey, default_data_id
from federation.agent.ledger_view import read_ledger

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELPER = pathlib.Path(__file__).with_name("reserve_helper.py")
COORD = "https://coord.example"
DELTA = 1e-5
EVENT = dp_events.round_event(0.01, 1.1, 100)  # epsilon ~0.956 at 1e-5 on its own
EPS_ONE = acc.compose_epsilon([EVENT], DELTA)
FP = {"sha256": "0" * 64, "records": 3, "bytes": 10}


def key(n: int, dataset: str = "hospital-a", coordinator: str = COORD) -> RoundKey:
    return RoundKey(coordinator, n, dataset)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("x,y\n1,0\n2,1\n3,0\n")
    return path


@pytest.fixture
def ledger(state):
    with PartnerLedger.open(state) as led:
        yield led


def lines(state) -> list[str]:
    return (state / pl.LEDGER_FILE).read_text().splitlines()


def rewrite(state, entries: list[dict], *, rehash_from: int | None = None) -> None:
    """Write entries back; from `rehash_from` on, recompute hashes and links as a forger would."""
    if rehash_from is not None:
        prev = entries[rehash_from - 2]["entry_hash"] if rehash_from > 1 else pl.GENESIS_HASH
        for e in entries[rehash_from - 1 :]:
            e["prev_hash"] = prev
            e["entry_hash"] = prev = pl.compute_entry_hash(e)
    (state / pl.LEDGER_FILE).write_bytes(b"".join(chain.canonical_bytes(e) + b"\n" for e in entries))


# --- append, verify, restart ------------------------------------------------------------------


def test_append_commit_release_and_verify(ledger, state):
    ledger.set_budget("src", epsilon=3.0, delta=DELTA)
    r1 = ledger.reserve(key(1), data_id="src", event=EVENT, ticket_hash="t1", fingerprint=FP)
    assert r1.state == "reserved" and r1.seq == 2 and ledger.spent("src") == pytest.approx(EPS_ONE)
    assert ledger.commit(key(1)).state == "committed"
    assert ledger.commit(key(1)).state == "committed"  # idempotent: no second entry
    ledger.reserve(key(2), data_id="src", event=EVENT, ticket_hash="t2", fingerprint=FP)
    assert ledger.release(key(2), reason="dropped out before the masked input").state == "released"
    assert ledger.spent("src") == pytest.approx(EPS_ONE)  # released: back to one round
    assert ledger.entries == 5 and len(lines(state)) == 5

    view = read_ledger(state, verify=True)
    assert view.error is None and view.head_hash == ledger.head_hash
    d = view.by_data()["src"]
    assert (d["committed"], d["released"], d["reserved"]) == (1, 1, 0)
    assert d["spent"] == pytest.approx(EPS_ONE) and d["budget"] == 3.0 and d["budget_source"] == "operator"


def test_committed_round_is_never_released_and_no_round_is_reserved_twice(ledger):
    ledger.set_budget("src", epsilon=5.0, delta=DELTA)
    ledger.reserve(key(1), data_id="src", event=EVENT, ticket_hash=None, fingerprint=FP)
    ledger.commit(key(1))
    with pytest.raises(ReleaseRefused) as exc:
        ledger.release(key(1), reason="the coordinator asked")
    assert exc.value.code == "release_refused" and "budget stays spent" in exc.value.message
    with pytest.raises(RoundAlreadyReserved) as again:
        ledger.reserve(key(1), data_id="src", event=EVENT, ticket_hash=None, fingerprint=FP)
    assert again.value.code == "round_already_reserved" and again.value.reservation.state == "committed"
    # A released round is not trained again either.
    ledger.reserve(key(2), data_id="src", event=EVENT, ticket_hash=None, fingerprint=FP)
    ledger.release(key(2), reason="round aborted")
    with pytest.raises(RoundAlreadyReserved):
        ledger.reserve(key(2), data_id="src", event=EVENT, ticket_hash=None, fingerprint=FP)
    with pytest.raises(UnknownRound):
        ledger.commit(key(2))
    with pytest.raises(UnknownRound):
        ledger.commit(key(99))


def test_restart_sees_the_reservation(state):
    with PartnerLedger.open(state) as led:
        led.set_budget("src", epsilon=5.0, delta=DELTA)
        res = led.reserve(key(7), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    with PartnerLedger.open(state) as led:
        assert led.reservation_for(key(7)) == res
        assert led.reservation_for(key(7, dataset="other")) is None
        assert led.spent("src") == pytest.approx(EPS_ONE)
        with pytest.raises(RoundAlreadyReserved):
            led.reserve(key(7), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
        assert led.set_budget("src", epsilon=5.0, delta=DELTA) is False  # unchanged: nothing written
    assert len(lines(state)) == 2


def test_one_agent_per_state_directory(ledger, state):
    with pytest.raises(LedgerLocked) as exc:
        PartnerLedger.open(state)
    assert exc.value.code == "ledger_locked" and str(os.getpid()) in exc.value.message
    ledger.close()
    PartnerLedger.open(state).close()  # released with the descriptor


def test_reservation_survives_sigkill_and_a_new_process(state, data_file):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(state), "42", str(data_file)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("reserved "), proc.stderr.read()
        with pytest.raises(LedgerLocked) as locked:  # the live agent holds the state directory
            PartnerLedger.open(state)
        assert str(proc.pid) in locked.value.message
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with PartnerLedger.open(state) as led:
        res = led.reservation_for(key(42))
        assert res is not None and res.entry_hash == line.split()[1] and res.state == "reserved"
        assert res.fingerprint["records"] == 3
        with pytest.raises(RoundAlreadyReserved):
            led.reserve(key(42), data_id=default_data_id(data_file), event=EVENT, ticket_hash="ab" * 32, data_path=data_file)
    assert read_ledger(state, verify=True).error is None


# --- damage --------------------------------------------------------------------------------


def _three_entries(state):
    with PartnerLedger.open(state) as led:
        led.set_budget("src", epsilon=5.0, delta=DELTA)
        led.reserve(key(1), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
        led.commit(key(1))
    return [json.loads(x) for x in lines(state)]


def test_a_tampered_line_fails_verification_naming_it(state):
    entries = _three_entries(state)
    entries[1]["payload"]["ticket_hash"] = "forged"
    rewrite(state, entries)
    view = read_ledger(state, verify=True)
    assert view.error is not None and view.error.seq == 2 and "entry_hash mismatch" in view.error.reason
    assert len(view.entries) == 1
    with pytest.raises(LedgerCorrupt) as exc:
        PartnerLedger.open(state)  # the agent refuses to start on a damaged ledger
    assert exc.value.code == "ledger_corrupt" and exc.value.seq == 2


def test_a_rehashed_cheaper_event_fails_on_the_recomputed_composition(state):
    entries = _three_entries(state)
    for e in entries[1:]:
        e["event"]["count"] = 1  # claim one step instead of 100, and fix every hash after it
    rewrite(state, entries, rehash_from=2)
    view = read_ledger(state, verify=True)
    assert view.error.seq == 2 and "epsilon_spent_after" in view.error.reason


def test_a_deleted_line_breaks_the_chain(state):
    entries = _three_entries(state)
    rewrite(state, [entries[0], entries[2]])
    view = read_ledger(state, verify=True)
    assert view.error.seq == 2 and "out of sequence" in view.error.reason


def test_a_torn_final_line_is_ignored_then_cut(state):
    _three_entries(state)
    path = state / pl.LEDGER_FILE
    good = path.read_bytes()
    path.write_bytes(good + b'{"v":1,"seq":4,"kind":"RES')  # a crash mid-append
    view = read_ledger(state, verify=True)
    assert view.error is None and len(view.entries) == 3 and view.torn_bytes == 26
    with PartnerLedger.open(state) as led:
        assert path.read_bytes() == good  # cut off before anything is appended after it
        led.reserve(key(2), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    assert read_ledger(state, verify=True).error is None and len(lines(state)) == 4


@pytest.mark.parametrize(
    "damage",
    [
        lambda good: good[:-1] + b"\n{\"v\":1,\"seq\":4,\"kind\":\"RES\n",  # partial line followed by a newline
        lambda good: good.replace(b"\n", b"\n{torn\n", 1),  # garbage between complete lines
        lambda good: good + b"\n",  # an empty line
    ],
)
def test_any_other_damage_fails_verification(state, damage):
    _three_entries(state)
    path = state / pl.LEDGER_FILE
    path.write_bytes(damage(path.read_bytes()))
    view = read_ledger(state, verify=True)
    assert view.error is not None
    with pytest.raises(LedgerCorrupt):
        PartnerLedger.open(state)


# --- budgets --------------------------------------------------------------------------------


def test_local_budget_refuses_with_the_figures_and_writes_nothing(ledger, state):
    ledger.set_budget("src", epsilon=1.0, delta=DELTA)  # one round (0.956) fits, two (1.058) do not
    ledger.reserve(key(1), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    before = (state / pl.LEDGER_FILE).read_bytes()
    with pytest.raises(LocalBudgetExceeded) as exc:
        ledger.reserve(key(2), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    e = exc.value
    assert e.code == "local_budget_exceeded"
    assert e.details["spent"] == pytest.approx(EPS_ONE)
    assert e.details["requested"] == pytest.approx(EPS_ONE)
    assert e.details["would_spend"] == pytest.approx(acc.compose_epsilon([EVENT, EVENT], DELTA))
    assert e.details["budget"] == 1.0 and e.details["delta"] == DELTA
    assert f"spent epsilon {EPS_ONE:.4f}" in e.message and "budget 1.0000" in e.message and f"requests {EPS_ONE:.4f}" in e.message
    assert (state / pl.LEDGER_FILE).read_bytes() == before and ledger.reservation_for(key(2)) is None


def test_two_coordinator_datasets_on_one_source_share_one_budget(ledger):
    # Each dataset's own budget (1.0) allows one round each; the source's budget is one.
    ledger.record_shown_budget("src", coordinator=COORD, dataset="hospital-a", epsilon=1.0, delta=DELTA)
    ledger.record_shown_budget("src", coordinator="https://other.example", dataset="hosp-copy", epsilon=1.0, delta=DELTA)
    ledger.reserve(key(1, "hospital-a"), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    with pytest.raises(LocalBudgetExceeded):
        ledger.reserve(key(1, "hosp-copy", "https://other.example"), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    # Within budget, both compose into one figure.
    ledger.set_budget("src", epsilon=3.0, delta=DELTA)
    ledger.reserve(key(1, "hosp-copy", "https://other.example"), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    assert ledger.spent("src") == pytest.approx(acc.compose_epsilon([EVENT, EVENT], DELTA))
    assert ledger.spent("src") < 2 * EPS_ONE  # composition, not a sum
    # Another source is untouched.
    assert ledger.spent("elsewhere") == 0.0


def test_appending_records_keeps_the_ledger_and_records_the_new_fingerprint(ledger, data_file, state):
    data_id = default_data_id(data_file)
    assert data_id == str(data_file.resolve())
    ledger.set_budget(data_id, epsilon=5.0, delta=DELTA)
    first = ledger.reserve(key(1), data_id=data_id, event=EVENT, ticket_hash="t", data_path=data_file)
    with data_file.open("a") as fh:
        fh.write("4,1\n5,0\n")
    assert default_data_id(data_file) == data_id
    second = ledger.reserve(key(2), data_id=default_data_id(data_file), event=EVENT, ticket_hash="t", data_path=data_file)
    assert (first.fingerprint["records"], second.fingerprint["records"]) == (3, 5)
    assert first.fingerprint["sha256"] != second.fingerprint["sha256"]
    assert ledger.spent(data_id) == pytest.approx(acc.compose_epsilon([EVENT, EVENT], DELTA))  # not reset
    fps = read_ledger(state).by_data()[data_id]["fingerprints"]
    assert [fp["records"] for fp in fps] == [3, 5]


def test_without_an_operator_budget_the_smallest_shown_is_used_and_logged(ledger, caplog):
    with pytest.raises(LocalBudgetUnset) as unset:
        ledger.reserve(key(1), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    assert unset.value.code == "local_budget_unset"
    ledger.record_shown_budget("src", coordinator=COORD, dataset="hospital-a", epsilon=8.0, delta=1e-5)
    ledger.record_shown_budget("src", coordinator=COORD, dataset="hospital-b", epsilon=1.2, delta=1e-6)
    ledger.record_shown_budget("src", coordinator=COORD, dataset="hospital-c", epsilon=4.0, delta=1e-5)
    assert ledger.record_shown_budget("src", coordinator=COORD, dataset="hospital-b", epsilon=1.2, delta=1e-6) is False
    budget = ledger.budget_for("src")
    assert (budget.epsilon, budget.delta, budget.source) == (1.2, 1e-6, "shown")
    assert budget.shown_by == f"{COORD} dataset hospital-b"
    with caplog.at_level(logging.INFO, logger="fedgov.agent.ledger"):
        ledger.reserve(key(1), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    assert "using the smallest budget shown for it: epsilon 1.2" in caplog.text
    with pytest.raises(LocalBudgetExceeded):  # 1.2 at delta 1e-6, whatever hospital-a's 8 says
        ledger.reserve(key(2, "hospital-a"), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    ledger.set_budget("src", epsilon=8.0, delta=1e-5)  # the operator's word wins
    assert ledger.budget_for("src").source == "operator"
    ledger.reserve(key(2, "hospital-a"), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)


def test_pld_accountant(ledger, state):
    event = dp_events.round_event(0.05, 1.5, 10)
    ledger.set_budget("src", epsilon=5.0, delta=DELTA, accountant="pld")
    ledger.reserve(key(1), data_id="src", event=event, ticket_hash="t", fingerprint=FP)
    ledger.reserve(key(2), data_id="src", event=event, ticket_hash="t", fingerprint=FP)
    assert ledger.spent("src") == pytest.approx(acc.pld_epsilon([event, event], DELTA))
    assert read_ledger(state, verify=True).error is None


def test_a_check_uses_the_cumulative_vector_not_the_history(ledger, monkeypatch):
    ledger.set_budget("src", epsilon=1000.0, delta=DELTA)
    for n in range(1, 51):
        ledger.reserve(key(n), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    expected = acc.compose_epsilon([EVENT] * 51, DELTA)
    calls = {"vector": 0, "compose": 0}
    real_vector = acc.rdp_vector_from_json

    def counting_vector(*a, **kw):
        calls["vector"] += 1
        return real_vector(*a, **kw)

    def refuse_compose(*a, **kw):
        calls["compose"] += 1
        raise AssertionError("recomposed the history")

    monkeypatch.setattr(acc, "rdp_vector_from_json", counting_vector)
    monkeypatch.setattr(acc, "compose_rdp", refuse_compose)
    ledger.reserve(key(51), data_id="src", event=EVENT, ticket_hash="t", fingerprint=FP)
    assert calls == {"vector": 1, "compose": 0}
    assert ledger.spent("src") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"epsilon": 0.0, "delta": DELTA}, "positive"),
        ({"epsilon": float("nan"), "delta": DELTA}, "positive"),
        ({"epsilon": 1.0, "delta": 1.0}, "delta"),
        ({"epsilon": 1.0, "delta": DELTA, "accountant": "moments"}, "accountant"),
    ],
)
def test_bad_budgets_are_refused_and_write_nothing(ledger, state, kwargs, fragment):
    with pytest.raises(LedgerError) as exc:
        ledger.set_budget("src", **kwargs)
    assert exc.value.code == "invalid_ledger_input" and fragment in exc.value.message
    assert (state / pl.LEDGER_FILE).read_bytes() == b""


def test_a_bad_event_is_refused(ledger):
    ledger.set_budget("src", epsilon=5.0, delta=DELTA)
    bad = {"module_name": "os", "class_name": "system", "command": "true"}
    with pytest.raises(LedgerError, match="not allowed"):
        ledger.reserve(key(1), data_id="src", event=bad, ticket_hash="t", fingerprint=FP)
    assert ledger.entries == 1


# --- the CLI --------------------------------------------------------------------------------


def test_cli_shows_and_verifies(state, capsys):
    _three_entries(state)
    assert agent_cli.main(["ledger", "--state", str(state), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "data src" in out and "RESERVE" in out and f"spent {EPS_ONE:.4f}" in out
    assert agent_cli.main(["ledger", "--state", str(state), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["verified"] is False and doc["entries"] == 3
    assert doc["data"]["src"]["spent"] == pytest.approx(EPS_ONE) and doc["data"]["src"]["committed"] == 1


def test_cli_verify_exit_codes_in_a_real_process(state):
    entries = _three_entries(state)

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "federation.agent", "ledger", "--state", str(state), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )

    assert run("--verify", "--json").returncode == 0
    entries[2]["epsilon_spent_after"] = 0.0
    rewrite(state, entries)
    bad = run("--verify", "--json")
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["error"]["seq"] == 3 and doc["error"]["code"] == "ledger_corrupt"
    text = run("--verify")
    assert text.returncode == 1 and "FAILED at entry #3" in text.stdout
    assert run().returncode == 0  # without --verify the stored figures are shown
    assert run("--bogus").returncode == 2
    assert subprocess.run(
        [sys.executable, "-m", "federation.agent", "ledger", "--state", str(state / "nope")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    ).returncode == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "2"], "--budget and --delta go together"),
        (["--delta", "1e-5"], "--budget and --delta go together"),
        (["--budget", "-1", "--delta", "1e-5"], "--budget must be a positive epsilon"),
        (["--budget", "2", "--delta", "1.5"], "--delta must be between 0 and 1"),
    ],
)
def test_agent_cli_checks_the_local_budget_options(data_file, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        agent_cli.main(["--server", "http://coord.example", "--token", "t", "--data", str(data_file), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


# --- boundary -------------------------------------------------------------------------------


def test_the_ledger_loads_no_django_and_only_pure_accounting_modules():
    code = (
        "import sys, federation.agent.ledger, federation.agent.__main__; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'celery', 'fedgov')]; "
        "acct = sorted(m for m in sys.modules if m.split('.')[0] == 'accounting'); "
        "assert not bad, bad; assert acct == ['accounting', 'accounting.accountant', 'accounting.chain', 'accounting.dp_events', "
        "'accounting.receipts', 'accounting.tickets'], acct"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # And statically, the accounting modules the agent uses import nothing of the coordinator.
    pure = ("accountant", "chain", "dp_events", "receipts", "tickets")  # the signed formats: accounting/tickets.py, receipts.py
    for path in (ROOT / "accounting" / f"{name}.py" for name in pure):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else [f"accounting.{node.module or a.name}" for a in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("django", "rest_framework", "celery", "fedgov", "federation"), (path, name)
                if name.startswith("accounting."):
                    assert name in {f"accounting.{p}" for p in pure}, (path, name)


def test_entry_hash_is_sha256_of_the_projects_canonical_json(ledger, state):
    ledger.set_budget("src", epsilon=2.0, delta=DELTA)
    entry = json.loads(lines(state)[0])
    doc = {k: v for k, v in entry.items() if k != "entry_hash"}
    import hashlib

    assert entry["entry_hash"] == hashlib.sha256(pl.HASH_DOMAIN + dp_events.canonical_json(doc).encode()).hexdigest()
    assert lines(state)[0] == dp_events.canonical_json(entry)  # lines are canonical JSON too
