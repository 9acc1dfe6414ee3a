"""Downloading an audit bundle only reads: heads are signed when entries are appended (after
the append's commit) or by the beat sweep, never by a GET (ARCHITECTURE.md, Ledger)."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from accounting import bundle
from accounting import heads as ledger_heads
from accounting.models import DatasetBudget, SignedHead
from accounting.services import budget as accounting_services
from federation.models import TrainingRound
from federation.tasks import deadlines_sweep

pytestmark = pytest.mark.django_db


def run_a_round(cast, number: int = 1) -> TrainingRound:
    round = TrainingRound.objects.create(plan=cast.plan, number=number, status=TrainingRound.Status.RUNNING)
    for d in cast.datasets:
        round.participant_links.create(dataset=d, status="finished", last_phase="unmask")
    accounting_services.budget_reserve(round=round, actor=cast.admin)
    accounting_services.budget_commit(round=round, actor=cast.admin)
    return round


def download(client, dataset, tmp_path, name: str):
    response = client.get(reverse("web:ledger_bundle", args=[dataset.slug]))
    assert response.status_code == 200, response.status_code
    path = tmp_path / name
    path.write_bytes(response.content)
    return path, json.loads(response.content)


def last_head(data) -> dict:
    (chain,) = data["chains"]
    return chain["signed_heads"][-1]


def test_two_downloads_sign_nothing_and_the_bundle_covers_the_latest_entry(
    cast, as_user, tmp_path, django_capture_on_commit_callbacks, capsys
):
    dataset = cast.dataset_a
    with django_capture_on_commit_callbacks(execute=True):  # appends commit: their heads are signed then
        run_a_round(cast)
    heads = SignedHead.objects.count()
    budget = DatasetBudget.objects.get(dataset=dataset)
    assert SignedHead.objects.filter(dataset=dataset, seq=budget.entry_count).exists()

    client = as_user(cast.auditor)
    first, data = download(client, dataset, tmp_path, "first.json")
    second, _ = download(client, dataset, tmp_path, "second.json")
    assert SignedHead.objects.count() == heads

    head = last_head(data)
    assert (head["seq"], head["head_hash"]) == (budget.entry_count, budget.head_hash)
    assert len(data["chains"][0]["entries"]) == budget.entry_count
    call_command("verify_ledger", bundle=str(second), public_key=ledger_heads.public_key_hex())
    assert "bundle verifies" in capsys.readouterr().out
    report = bundle.verify(data)
    assert [c.dataset for c in report.chains] == [dataset.slug]


def test_a_download_never_signs_an_unsigned_head_the_sweep_does(cast, as_user, tmp_path, capsys):
    """The after-commit signature of the last append did not happen (here: the test's
    transaction never commits; in production: a failure, or signing on commit turned off).
    Downloading (web), reading the ledger and verifying it (API) write no head; the bundle
    stops at the latest signed head and still verifies; the beat sweep signs the rest."""

    dataset = cast.dataset_a
    for d in cast.datasets:
        ledger_heads.sign_head(d)
    signed_seq = DatasetBudget.objects.get(dataset=dataset).entry_count
    run_a_round(cast)  # no on_commit: its heads stay unsigned
    budget = DatasetBudget.objects.get(dataset=dataset)
    assert budget.entry_count > signed_seq
    heads = SignedHead.objects.count()

    client = as_user(cast.auditor)
    path, data = download(client, dataset, tmp_path, "a.json")
    download(client, dataset, tmp_path, "b.json")
    assert client.get(reverse("web:ledger", args=[dataset.slug])).status_code == 200
    api = as_user(cast.auditor)
    assert api.get(f"/api/v1/datasets/{dataset.pk}/ledger/").status_code == 200
    assert api.get(f"/api/v1/datasets/{dataset.pk}/ledger/verification/").status_code == 200
    assert SignedHead.objects.count() == heads, "a read signed a head"

    assert last_head(data)["seq"] == signed_seq
    call_command("verify_ledger", bundle=str(path), public_key=ledger_heads.public_key_hex())
    assert "bundle verifies" in capsys.readouterr().out

    # The schedule signs what the commit did not; the next download covers the latest entry.
    deadlines_sweep()
    assert SignedHead.objects.count() == heads + len(cast.datasets)
    path, data = download(client, dataset, tmp_path, "c.json")
    assert (last_head(data)["seq"], last_head(data)["head_hash"]) == (budget.entry_count, budget.head_hash)
    call_command("verify_ledger", bundle=str(path), public_key=ledger_heads.public_key_hex())
    deadlines_sweep()
    assert SignedHead.objects.count() == heads + len(cast.datasets), "the sweep signs a head once"


def test_export_ledger_signs_only_when_asked(cast, tmp_path, capsys):

    for d in cast.datasets:
        ledger_heads.sign_head(d)
    run_a_round(cast)  # heads left unsigned
    heads = SignedHead.objects.count()
    call_command("export_ledger", out=str(tmp_path / "plain.json"))
    assert SignedHead.objects.count() == heads
    call_command("export_ledger", out=str(tmp_path / "signed.json"), sign_pending=True)
    assert SignedHead.objects.count() == heads + len(cast.datasets)
    data = bundle.load(str(tmp_path / "signed.json"))
    for chain in data["chains"]:
        budget = DatasetBudget.objects.get(dataset__slug=chain["dataset"])
        assert chain["signed_heads"][-1]["seq"] == budget.entry_count
    bundle.verify(data)


def test_the_ledger_page_gives_an_offline_check_that_works_as_written(cast, as_user, tmp_path, django_capture_on_commit_callbacks):
    """The command the page shows, run on the bundle it offers with the coordinator's key in
    place of KEY, verifies it; the fingerprint it shows is the one the verifier prints (so an
    auditor can compare it with the key obtained out of band)."""
    import html
    import re
    import shlex

    from tests.accounting.receipting import run_cli

    with django_capture_on_commit_callbacks(execute=True):  # appends commit: their heads are signed then
        run_a_round(cast)
    client = as_user(cast.auditor)
    page = client.get(reverse("web:ledger", args=[cast.dataset_a.slug])).content.decode()
    offline = html.unescape(re.search(r'<small id="verify-offline">(.*?)</small>', page, re.S).group(1))
    command = re.search(r"<code>python -m accounting\.verify ([^<]*)</code>", offline).group(1)
    fingerprint = re.search(r"fingerprint starts <code>([0-9a-f ]+)</code>", offline).group(1)
    assert "verify_ledger --bundle FILE</code>;" not in page  # the old line, refused without a pinned key
    path, _ = download(client, cast.dataset_a, tmp_path, "bundle.json")
    args = [str(path) if a == "FILE" else ledger_heads.public_key_hex() if a == "KEY" else a for a in shlex.split(command)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"coordinator key {fingerprint} " in result.stdout
    assert "python -m federation.agent reconcile --state DIR --bundle FILE" in offline
