"""budget_grant / budget_reserve / budget_commit / budget_release / budget_check."""

import dp_accounting as dpa
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from accounting import accountant as acc
from accounting import audit, dp_events, errors, heads, selectors
from accounting.models import AppendOnlyError, DatasetBudget, LedgerEntry, SignedHead
from accounting.services import budget as services
from federation.models import Dataset, TrainingRound
from tests.accounting.helpers import make_rounds, set_status
from tests.tamper import force_update

pytestmark = pytest.mark.django_db

Status = TrainingRound.Status


def library_epsilon(events, delta):
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def event_of(plan, dataset):
    return dp_events.dataset_round_event(plan.dp_params_for(dataset))


def snapshot():
    return (
        list(LedgerEntry.objects.order_by("id").values_list("id", "entry_hash")),
        list(
            DatasetBudget.objects.order_by("id").values_list("dataset_id", "entry_count", "head_hash", "epsilon_spent", "cum_rdp")
        ),
    )


def test_registering_a_dataset_opens_its_ledger_with_a_grant(cast):
    for dataset in cast.datasets:
        entries = list(selectors.ledger_entries(dataset=dataset))
        assert [e.kind for e in entries] == ["GRANT"]
        assert entries[0].epsilon_budget == dataset.epsilon_budget
        assert entries[0].actor.startswith("rep-")


def test_reserve_charges_the_composition_of_every_round_to_every_dataset(cast):
    rounds = make_rounds(cast.plan, 3)
    for r in rounds:
        services.budget_reserve(round=r, actor=cast.admin)
    for dataset in cast.datasets:
        event = event_of(cast.plan, dataset)
        expected = library_epsilon([event] * 3, dataset.delta)
        assert selectors.dataset_epsilon_spent(dataset=dataset) == pytest.approx(expected, rel=1e-9)
        # composition, not a sum of per-round epsilons
        assert expected < 3 * library_epsilon([event], dataset.delta)
        assert sorted(selectors.open_reservations(dataset=dataset).values_list("round_id", flat=True)) == [r.pk for r in rounds]
    assert all(r.ok for r in audit.verify_all())


def test_budget_exceeded_names_the_dataset_and_changes_nothing(cast):
    first, second = make_rounds(cast.plan, 2)
    services.budget_reserve(round=first, actor=cast.admin)
    # Dataset B (fewest records, so the largest sampling rate) gets a budget that one more
    # round would exceed; A and C have room. Nothing may be written for any of them.
    b = cast.datasets[1]
    spent_b = selectors.dataset_epsilon_spent(dataset=b)
    Dataset.objects.filter(pk=b.pk).update(epsilon_budget=spent_b + 0.01)
    services.budget_grant(dataset=Dataset.objects.get(pk=b.pk), epsilon_budget=spent_b + 0.01, actor=cast.admin)
    before = snapshot()
    with pytest.raises(errors.BudgetExceeded) as excinfo:
        services.budget_reserve(round=second, actor=cast.admin)
    exc = excinfo.value
    assert exc.code == "budget_exceeded"
    assert exc.dataset.pk == b.pk
    needed = library_epsilon([event_of(cast.plan, b)] * 2, b.delta)
    assert exc.requested == pytest.approx(needed - spent_b, rel=1e-9)
    assert exc.remaining == pytest.approx(0.01, rel=1e-6)
    assert str(exc) == errors.MSG_BUDGET_EXCEEDED.format(
        dataset=b.slug, requested=exc.requested, remaining=exc.remaining, budget=spent_b + 0.01
    )
    assert set(exc.details["datasets"]) == {b.slug}
    assert snapshot() == before
    assert not LedgerEntry.objects.filter(round=second).exists()


def test_reserving_the_same_round_twice_is_a_no_op(cast):
    (r,) = make_rounds(cast.plan, 1)
    first = services.budget_reserve(round=r, actor=cast.admin)
    before = snapshot()
    again = services.budget_reserve(round=r, actor=cast.admin)
    assert [e.pk for e in again] == [e.pk for e in first]
    assert snapshot() == before


def test_commit_marks_final_without_changing_spent_and_is_idempotent(cast):
    (r,) = make_rounds(cast.plan, 1)
    services.budget_reserve(round=r, actor=cast.admin)
    spent = [selectors.dataset_epsilon_spent(dataset=d) for d in cast.datasets]
    commits = services.budget_commit(round=r, actor=cast.admin)
    assert {e.kind for e in commits} == {"COMMIT"} and len(commits) == 3
    assert [selectors.dataset_epsilon_spent(dataset=d) for d in cast.datasets] == spent
    assert not selectors.open_reservations(round=r).exists()
    assert services.budget_commit(round=r, actor=cast.admin) == []
    assert selectors.round_reservation_state(round=r) == {d.slug: "committed" for d in cast.datasets}


def test_release_is_refused_without_proof_and_the_budget_stays_spent(cast):
    (r,) = make_rounds(cast.plan, 1)
    services.budget_reserve(round=r, actor=cast.admin)
    before = snapshot()
    set_status(r, Status.ABORTED)
    with pytest.raises(errors.ReleaseRefused) as excinfo:
        services.budget_release(round=r, actor=cast.admin, reason="worker lost", no_update_released=False)
    assert str(excinfo.value) == errors.MSG_RELEASE_WITHOUT_PROOF.format(round=r.pk)
    with pytest.raises(errors.ReleaseRefused):
        services.budget_release(round=r, actor=cast.admin, reason="worker lost", no_update_released="yes")
    with pytest.raises(errors.ReleaseRefused):
        services.budget_release(round=r, actor=cast.admin, reason="  ", no_update_released=True)
    # A round that is still running, or completed, cannot show that nothing left a partner.
    for status in (Status.RUNNING, Status.AGGREGATING, Status.COMPLETED):
        set_status(r, status)
        with pytest.raises(errors.ReleaseRefused) as excinfo:
            services.budget_release(round=r, actor=cast.admin, reason="changed my mind", no_update_released=True)
        assert str(excinfo.value) == errors.MSG_RELEASE_ROUND_STATE.format(round=r.pk, status=status)
    assert snapshot() == before
    assert selectors.open_reservations(round=r).count() == 3


def test_release_with_proof_gives_the_budget_back(cast):
    kept, dropped = make_rounds(cast.plan, 2)
    services.budget_reserve(round=kept, actor=cast.admin)
    spent_before = [selectors.dataset_epsilon_spent(dataset=d) for d in cast.datasets]
    services.budget_reserve(round=dropped, actor=cast.admin)
    set_status(dropped, Status.FAILED)
    entries = services.budget_release(
        round=dropped, actor=cast.admin, reason="a partner crashed before training", no_update_released=True
    )
    assert {e.kind for e in entries} == {"RELEASE"}
    for d, before in zip(cast.datasets, spent_before, strict=True):
        assert selectors.dataset_epsilon_spent(dataset=d) == pytest.approx(before, rel=1e-9)
    assert services.budget_release(round=dropped, actor=cast.admin, reason="again", no_update_released=True) == []
    assert all(r.ok for r in audit.verify_all())


def test_a_committed_reservation_cannot_be_released_nor_a_released_one_committed(cast):
    committed, released = make_rounds(cast.plan, 2)
    services.budget_reserve(round=committed, actor=cast.admin)
    services.budget_commit(round=committed, actor=cast.admin)
    set_status(committed, Status.FAILED)
    with pytest.raises(errors.LedgerStateError):
        services.budget_release(round=committed, actor=cast.admin, reason="late failure", no_update_released=True)
    services.budget_reserve(round=released, actor=cast.admin)
    set_status(released, Status.ABORTED)
    services.budget_release(round=released, actor=cast.admin, reason="aborted early", no_update_released=True)
    with pytest.raises(errors.LedgerStateError):
        services.budget_commit(round=released, actor=cast.admin)
    with pytest.raises(errors.LedgerStateError):
        services.budget_reserve(round=released, actor=cast.admin)


def test_commit_or_release_of_a_round_that_reserved_nothing_is_refused(cast):
    (r,) = make_rounds(cast.plan, 1, status=Status.ABORTED)
    with pytest.raises(errors.LedgerStateError):
        services.budget_commit(round=r, actor=cast.admin)
    with pytest.raises(errors.LedgerStateError):
        services.budget_release(round=r, actor=cast.admin, reason="never ran", no_update_released=True)


def test_budget_check_reports_requested_and_remaining_as_epsilon(cast):
    first, second = make_rounds(cast.plan, 2)
    services.budget_reserve(round=first, actor=cast.admin)
    results = services.budget_check(round=second)
    assert [r.dataset.pk for r in results] == [d.pk for d in cast.datasets]
    for result, dataset in zip(results, cast.datasets, strict=True):
        event = event_of(cast.plan, dataset)
        spent = library_epsilon([event], dataset.delta)
        assert result.spent == pytest.approx(spent, rel=1e-9)
        assert result.requested == pytest.approx(library_epsilon([event] * 2, dataset.delta) - spent, rel=1e-9)
        assert result.remaining == pytest.approx(dataset.epsilon_budget - spent, rel=1e-9)
        assert result.ok and not result.reserved
    assert all(r.reserved and r.requested == 0.0 for r in services.budget_check(round=first))


def test_budget_check_costs_two_queries_whatever_the_number_of_datasets(cast, django_assert_num_queries):
    """The governance report's hot read (bench/accounting.py times it): the round's datasets
    with their budget rows, then the round's own entries; nothing per dataset."""
    first, second = make_rounds(cast.plan, 2)
    services.budget_reserve(round=first, actor=cast.admin)
    services.budget_check(round=second)  # the round's event memoised, as in a running process
    for r in (first, second):
        with django_assert_num_queries(2):
            results = services.budget_check(round=r)
        assert len(results) == len(cast.datasets) == 3


def test_budget_check_says_no_when_the_composition_would_exceed_the_budget(cast):
    (r,) = make_rounds(cast.plan, 1)
    a = cast.datasets[0]
    one_round = library_epsilon([event_of(cast.plan, a)], a.delta)
    Dataset.objects.filter(pk=a.pk).update(epsilon_budget=one_round * 0.99)
    results = {x.dataset.slug: x for x in services.budget_check(round=r)}
    assert not results[a.slug].ok
    assert results[a.slug].requested == pytest.approx(one_round, rel=1e-9)
    with pytest.raises(errors.BudgetExceeded):
        services.budget_reserve(round=r, actor=cast.admin)


def test_grant_records_the_new_budget_and_refuses_nonsense(cast):
    a = cast.datasets[0]
    entry = services.budget_grant(dataset=a, epsilon_budget=9.5, actor=cast.admin)
    assert entry.kind == "GRANT" and entry.epsilon_budget == 9.5 and entry.actor == "admin"
    assert DatasetBudget.objects.get(dataset=a).epsilon_budget == 9.5
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(errors.InvalidBudget):
            services.budget_grant(dataset=a, epsilon_budget=bad, actor=cast.admin)


def test_a_dataset_without_a_grant_opens_its_ledger_at_the_first_reservation(cast):
    d = Dataset.objects.create(
        organisation=cast.org_a,
        agreement=cast.agreement,
        slug="bare",
        name="Bare",
        record_count=1000,
        feature_names=["age", "bmi", "glucose"],
        label_name="outcome",
        label_classes=["no", "yes"],
        epsilon_budget=5.0,
        delta=1e-5,
    )
    cast.plan.datasets.add(d)
    (r,) = make_rounds(cast.plan, 1, datasets=[d])
    services.budget_reserve(round=r, actor=cast.admin)
    assert [(e.kind, e.actor) for e in selectors.ledger_entries(dataset=d)] == [("GRANT", "admin"), ("RESERVE", "admin")]
    assert audit.verify_dataset(d).ok


def test_pld_datasets_are_charged_their_pld_composition(cast):
    a = cast.datasets[0]
    force_update(Dataset, a.pk, accountant="pld")
    rounds = make_rounds(cast.plan, 2)
    for r in rounds:
        services.budget_reserve(round=r, actor=cast.admin)
    event = event_of(cast.plan, a)
    expected = (
        PLDAccountant(value_discretization_interval=acc.PLD_VALUE_DISCRETIZATION_INTERVAL)
        .compose(dpa.ComposedDpEvent([event, event]))
        .get_epsilon(a.delta)
    )
    spent = selectors.dataset_epsilon_spent(dataset=a)
    assert spent == pytest.approx(expected, rel=1e-6)
    assert spent < library_epsilon([event, event], a.delta)  # PLD is the tighter bound
    set_status(rounds[1], Status.ABORTED)
    services.budget_release(round=rounds[1], actor=cast.admin, reason="aborted", no_update_released=True)
    assert selectors.dataset_epsilon_spent(dataset=a) == pytest.approx(
        PLDAccountant().compose(event).get_epsilon(a.delta), rel=1e-6
    )
    assert audit.verify_dataset(a).ok


def test_a_delta_change_is_recorded_and_replays(cast):
    a = cast.datasets[0]
    (r1, r2) = make_rounds(cast.plan, 2)
    services.budget_reserve(round=r1, actor=cast.admin)
    force_update(Dataset, a.pk, delta=1e-6)
    services.budget_reserve(round=r2, actor=cast.admin)
    last = selectors.ledger_entries(dataset=a).last()
    assert last.delta == 1e-6
    assert last.epsilon_spent_after == pytest.approx(library_epsilon([event_of(cast.plan, a)] * 2, 1e-6), rel=1e-9)
    assert audit.verify_dataset(Dataset.objects.get(pk=a.pk)).ok


def test_ledger_rows_refuse_update_and_delete_through_the_orm(cast):
    entry = LedgerEntry.objects.first()
    entry.actor = "mallory"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        LedgerEntry.objects.filter(pk=entry.pk).update(actor="mallory")
    with pytest.raises(AppendOnlyError):
        LedgerEntry.objects.filter(pk=entry.pk).delete()
    with pytest.raises(AppendOnlyError):
        LedgerEntry.objects.bulk_update([entry], ["actor"])
    head = heads.sign_head(cast.datasets[0])
    with pytest.raises(AppendOnlyError):
        head.save()
    with pytest.raises(AppendOnlyError):
        SignedHead.objects.all().delete()
    assert LedgerEntry.objects.get(pk=entry.pk).actor != "mallory"


def test_bulk_budget_figures_match_the_single_dataset_selector(cast):
    (r,) = make_rounds(cast.plan, 1)
    services.budget_reserve(round=r, actor=cast.admin)
    figures = selectors.datasets_budget_figures(datasets=cast.datasets)
    for d in cast.datasets:
        assert figures[d.pk].epsilon_spent == selectors.dataset_epsilon_spent(dataset=d)
        assert figures[d.pk].epsilon_remaining == selectors.dataset_remaining_budget(dataset=d)
