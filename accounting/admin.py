"""Django admin for the ledger: read-only (ARCHITECTURE.md, Ledger 3 and Trust 4).

Budgets change only by ledger appends (accounting/services/budget.py); entries and signed heads are
append-only below the admin too (models and triggers)."""

from django.contrib import admin

from federation.admin import ReadOnlyAdmin

from . import models


@admin.register(models.DatasetBudget)
class DatasetBudgetAdmin(ReadOnlyAdmin):
    list_display = ("dataset", "chain_slug", "accountant", "epsilon_budget", "epsilon_spent", "delta", "entry_count")
    list_filter = ("accountant",)
    search_fields = ("chain_slug", "head_hash")


@admin.register(models.LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("dataset_slug", "seq", "kind", "round", "epsilon_budget", "epsilon_spent_after", "actor", "created_at")
    list_filter = ("kind", "accountant")
    search_fields = ("dataset_slug", "entry_hash", "actor")


@admin.register(models.SignedHead)
class SignedHeadAdmin(ReadOnlyAdmin):
    list_display = ("dataset_slug", "seq", "head_hash", "key_id", "signed_at")
    search_fields = ("dataset_slug", "head_hash")


@admin.register(models.Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = ("dataset_slug", "seq", "round", "organisation_slug", "receipt_hash", "received_at")
    search_fields = ("dataset_slug", "receipt_hash")
