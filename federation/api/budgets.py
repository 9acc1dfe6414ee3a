"""Budget figures for a page of datasets in one query.

`accounting.selectors.dataset_remaining_budget` answers for one dataset with a query of its
own; a list endpoint needs the same figure for a whole page without a query per row. This
reads the page's DatasetBudget rows at once and applies the accounting app's own rule
(`accounting.services._effective_budget`: the lower of the ledger's last GRANT and the
Dataset's budget), so the rule stays written once, in accounting.
TODO(lead): replace with a public bulk selector in accounting.selectors when it exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounting.models import DatasetBudget
from accounting.services import _effective_budget


@dataclass(frozen=True)
class BudgetFigures:
    epsilon_spent: float
    epsilon_remaining: float


def budget_figures(datasets) -> dict[int, BudgetFigures]:
    datasets = list(datasets)
    rows = {b.dataset_id: b for b in DatasetBudget.objects.filter(dataset_id__in=[d.pk for d in datasets])}
    out = {}
    for dataset in datasets:
        row = rows.get(dataset.pk)
        if row is None:
            out[dataset.pk] = BudgetFigures(0.0, float(dataset.epsilon_budget))
        else:
            out[dataset.pk] = BudgetFigures(row.epsilon_spent, _effective_budget(row, dataset) - row.epsilon_spent)
    return out
