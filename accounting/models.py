"""The privacy-budget ledger.

* `DatasetBudget`: one row per dataset, the row that serialises its reservations (every
  append locks it with `select_for_update()`). It caches the chain's head and the running
  composition (cumulative RDP vector, spent epsilon) so that a budget check is O(number of
  RDP orders). It is derived state: `verify_ledger` recomputes it from the entries.
* `LedgerEntry`: append-only, one hash chain per dataset (ARCHITECTURE.md, Ledger 3).
* `SignedHead`: the coordinator's Ed25519 signature over a chain head (invariant 4).
* `Receipt`: a partner agent's countersigned receipt of a round it ran, one hash chain per
  dataset beside the ledger's (docs/TRUST-FORMATS.md).

Entries and signed heads refuse update and delete in the model, in the queryset, and in the
database (triggers, see accounting/triggers.py and the 0002 migration).
"""

from __future__ import annotations

import json

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from . import chain


class AppendOnlyError(Exception):
    """An attempt to change or delete a row of an append-only table."""


MSG_APPEND_ONLY = "{model} is append-only: {operation} refused."


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(MSG_APPEND_ONLY.format(model=self.model.__name__, operation="update"))

    def delete(self):
        raise AppendOnlyError(MSG_APPEND_ONLY.format(model=self.model.__name__, operation="delete"))

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError(MSG_APPEND_ONLY.format(model=self.model.__name__, operation="bulk_update"))

    def update_or_create(self, *args, **kwargs):
        raise AppendOnlyError(MSG_APPEND_ONLY.format(model=self.model.__name__, operation="update_or_create"))

    def _raw_delete(self, using):
        raise AppendOnlyError(MSG_APPEND_ONLY.format(model=self.model.__name__, operation="delete"))


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(MSG_APPEND_ONLY.format(model=type(self).__name__, operation="update"))
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(MSG_APPEND_ONLY.format(model=type(self).__name__, operation="delete"))


class DatasetBudget(models.Model):
    """A dataset's ledger head and running composition; locked by every append."""

    dataset = models.OneToOneField("federation.Dataset", on_delete=models.PROTECT, related_name="budget_state")
    chain_slug = models.CharField(max_length=64, help_text="The chain's name: the dataset's slug when the ledger opened.")
    accountant = models.CharField(max_length=3, default="rdp", help_text="Accountant of the chain (rdp or pld).")
    epsilon_budget = models.FloatField(default=0.0, help_text="Budget of the last GRANT.")
    delta = models.FloatField(help_text="Delta of the last entry.")
    cum_rdp = models.JSONField(help_text="Sum of the RDP vectors of every reserved, not released, event.")
    epsilon_spent = models.FloatField(default=0.0)
    head_hash = models.CharField(max_length=64, default=chain.GENESIS_HASH)
    entry_count = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(accountant__in=["rdp", "pld"]), name="dataset_budget_accountant_known"),
            models.CheckConstraint(condition=Q(epsilon_spent__gte=0), name="dataset_budget_spent_non_negative"),
        ]

    def __str__(self) -> str:
        return f"budget of dataset {self.dataset_id}: {self.epsilon_spent:.4f} / {self.epsilon_budget:.4f}"

    @property
    def remaining(self) -> float:
        return self.epsilon_budget - self.epsilon_spent


class LedgerEntry(AppendOnlyModel):
    class Kind(models.TextChoices):
        GRANT = chain.GRANT, _("Budget granted")
        RESERVE = chain.RESERVE, _("Reserved")
        COMMIT = chain.COMMIT, _("Committed")
        RELEASE = chain.RELEASE, _("Released")

    dataset = models.ForeignKey("federation.Dataset", on_delete=models.PROTECT, related_name="ledger_entries")
    dataset_slug = models.CharField(max_length=64, help_text="Snapshot: the chain is named by slug in audit bundles.")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    round = models.ForeignKey(
        "federation.TrainingRound", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    event = models.TextField(blank=True, help_text="Canonical JSON of the DP event (empty for a GRANT).")
    accountant = models.CharField(max_length=3)
    delta = models.FloatField()
    epsilon_budget = models.FloatField(help_text="Budget in force after this entry.")
    epsilon_spent_after = models.FloatField(help_text="Spent epsilon at `delta` after this entry.")
    actor = models.CharField(max_length=150, help_text="Username snapshot, or 'system'.")
    created_at = models.DateTimeField()
    payload = models.TextField(default="{}", help_text="Canonical JSON: budget, reason, proof of no release.")
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["dataset_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "seq"], name="ledger_seq_unique_per_dataset"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="ledger_seq_positive"),
            models.CheckConstraint(condition=Q(kind__in=list(chain.KINDS)), name="ledger_kind_known"),
            models.CheckConstraint(
                condition=Q(kind=chain.GRANT, round__isnull=True) | (~Q(kind=chain.GRANT) & Q(round__isnull=False)),
                name="ledger_round_iff_not_grant",
            ),
            models.CheckConstraint(condition=Q(epsilon_spent_after__gte=0), name="ledger_spent_non_negative"),
        ]
        indexes = [models.Index(fields=["round", "dataset"], name="ledger_round_dataset")]

    def __str__(self) -> str:
        return f"{self.dataset_slug}#{self.seq} {self.kind}"

    def document(self) -> dict:
        """The hashed document (chain.ENTRY_FIELDS) plus entry_hash: what bundles carry."""
        return {
            "v": chain.FORMAT_VERSION,
            "dataset": self.dataset_slug,
            "seq": self.seq,
            "kind": self.kind,
            "round": self.round_id,
            "event": json.loads(self.event) if self.event else None,
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "epsilon_spent_after": self.epsilon_spent_after,
            "actor": self.actor,
            "created_at": iso(self.created_at),
            "payload": json.loads(self.payload),
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }


class SignedHead(AppendOnlyModel):
    """The coordinator's signature over (dataset, seq, head hash)."""

    dataset = models.ForeignKey("federation.Dataset", on_delete=models.PROTECT, related_name="signed_heads")
    dataset_slug = models.CharField(max_length=64)
    seq = models.PositiveIntegerField()
    head_hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=64, help_text="SHA-256 of the raw Ed25519 public key, hex.")
    signed_at = models.DateTimeField()
    signature = models.CharField(max_length=128, help_text="Ed25519 signature, hex.")

    class Meta:
        ordering = ["dataset_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["dataset", "seq", "key_id"], name="signed_head_once_per_key")]

    def __str__(self) -> str:
        return f"{self.dataset_slug}@{self.seq} signed"

    def document(self) -> dict:
        return {
            "dataset": self.dataset_slug,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "key_id": self.key_id,
            "signed_at": iso(self.signed_at),
            "signature": self.signature,
        }


class Receipt(AppendOnlyModel):
    """A partner's receipt for (round, dataset), stored as received and hash-chained per dataset:
    receipt_hash = sha256(domain + prev_hash + canonical receipt), see accounting/receipts.py."""

    dataset = models.ForeignKey("federation.Dataset", on_delete=models.PROTECT, related_name="receipts")
    dataset_slug = models.CharField(max_length=64, help_text="The chain's name, as the receipt says.")
    seq = models.PositiveIntegerField()
    round = models.ForeignKey("federation.TrainingRound", on_delete=models.PROTECT, related_name="receipts")
    organisation_slug = models.CharField(max_length=64, help_text="Whose enrolled key signed it.")
    ticket_hash = models.CharField(max_length=64)
    agent_public_key = models.CharField(max_length=64)
    body = models.TextField(help_text="Canonical JSON of the receipt, signature included.")
    received_at = models.DateTimeField()
    prev_hash = models.CharField(max_length=64)
    receipt_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["dataset_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "seq"], name="receipt_seq_unique_per_dataset"),
            models.UniqueConstraint(fields=["dataset", "round"], name="receipt_once_per_round_and_dataset"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="receipt_seq_positive"),
        ]

    def __str__(self) -> str:
        return f"receipt {self.dataset_slug} round {self.round_id}"

    def document(self) -> dict:
        """The receipt object as the agent signed it (what bundles carry)."""
        return json.loads(self.body)


def iso(dt) -> str:
    """UTC ISO-8601 with microseconds: the one text form of a timestamp in hashes."""
    from datetime import UTC

    return dt.astimezone(UTC).isoformat(timespec="microseconds")
