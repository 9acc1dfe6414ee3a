"""Datasets and their budgets (figures from the accounting app's selectors: the ledger is the
one source of truth for spent epsilon)."""

from __future__ import annotations

from django.db.models import QuerySet

from .. import access
from ..models import Agreement, Dataset, Organisation
from .agreements import CLOSED
from .common import get_visible


def dataset_for(*, user, slug: str) -> Dataset:
    return get_visible(access.visible_datasets(user).select_related("organisation", "agreement"), what="Dataset", slug=slug)


def datasets_for(*, user) -> QuerySet[Dataset]:
    """The API's datasets: `access.visible_datasets(user)` (from the per-request list of visible
    agreements), with the organisation each shows."""
    return access.visible_datasets(user, cached=True).select_related("organisation")


def dataset_list_for(*, user) -> QuerySet[Dataset]:
    return access.visible_datasets(user).select_related("organisation", "agreement").order_by("organisation__name", "slug")


def dataset_rows_for(*, user) -> list[dict]:
    """The dataset list page: each dataset the user sees with its budget figures."""
    return [{"dataset": dataset, **budget_of(dataset=dataset)} for dataset in dataset_list_for(user=user)]


def datasets_of(*, user, organisation) -> QuerySet[Dataset]:
    """The datasets `user` sees that belong to `organisation`."""
    return access.visible_datasets(user).filter(organisation=organisation)


def audited_datasets(*, user) -> QuerySet[Dataset]:
    """Datasets of the agreements `user` audits, for the auditor's dashboard."""
    return access.audited_datasets(user).select_related("organisation", "agreement").order_by("slug")


def may_register(*, user) -> bool:
    """Whether the dataset list offers registration: administrators and representatives."""
    return access.is_administrator(user) or access.represented_organisations(user).exists()


def registration_scope(*, user) -> tuple[QuerySet[Organisation], QuerySet[Agreement]]:
    """Organisations and agreements `user` may register datasets for: administrators every
    organisation and open agreement; a representative its organisations and their open
    agreements. Anyone else: 403 for read-only roles, 404 for strangers."""
    if access.is_administrator(user):
        return Organisation.objects.all(), Agreement.objects.exclude(status__in=CLOSED)
    orgs = access.represented_organisations(user)
    if not orgs.exists():
        access.require_administrator(user, what="dataset", action="register")
    agreements = Agreement.objects.filter(parties__in=orgs).exclude(status__in=CLOSED).distinct()
    return orgs, agreements


def budget_of(*, dataset) -> dict:
    """A dataset's budget, spent and remaining epsilon, as the ledger says."""
    from accounting import selectors as acct

    summary = acct.dataset_budget_summary(dataset=dataset)
    return {
        "budget": float(summary["epsilon_budget"]),
        "spent": float(summary["epsilon_spent"]),
        "remaining": float(summary["epsilon_remaining"]),
        "entries": summary["entries"],
        "head_hash": summary["head_hash"],
        "open_reservations": summary["open_reservations"],
    }


def dataset_page(*, user, dataset: Dataset) -> dict:
    """The dataset page's reads (the page with its budget form, blank or refused, is built
    from this): figures, plans, who may change the budget or read the ledger."""
    return {
        "dataset": dataset,
        "figures": budget_of(dataset=dataset),
        "plans": dataset.plans.all(),
        "may_change_budget": access.may_change_budget(user, dataset),
        "can_read_ledger": access.may_read_ledger(user, dataset),
        "max_budget": dataset.agreement.max_epsilon_budget,
    }
