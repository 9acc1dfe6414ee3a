"""The privacy-budget ledger, read-only: entries, verification and the remaining budget of a
dataset, for its administrators, its organisation's representatives and the auditors of its
agreement (anyone else who can see the dataset gets 403, anyone who cannot 404).

Everything here reads through accounting's selectors and verifier: the API never
recomputes a ledger figure of its own.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from accounting import audit
from accounting import selectors as accounting
from accounting.models import LedgerEntry

from ..models import Dataset
from ..selectors.datasets import datasets_for
from ..selectors.ledger import ledger_dataset_by_pk
from ..services.datasets import dataset_raise_budget
from .base import ApiView, Input
from .fields import valid_pk
from .filters import LedgerEntryFilter


class LedgerEntryOutput(serializers.Serializer):
    """One entry as the chain hashes it (the same document an audit bundle carries), plus its id."""

    id = serializers.IntegerField()
    v = serializers.IntegerField(help_text="Entry format version.")
    dataset = serializers.CharField(help_text="Dataset slug, as the chain names it.")
    seq = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=LedgerEntry.Kind.choices)
    round = serializers.IntegerField(allow_null=True)
    event = serializers.JSONField(allow_null=True, help_text="The DP event charged (null for a grant).")
    accountant = serializers.CharField()
    delta = serializers.FloatField()
    epsilon_budget = serializers.FloatField()
    epsilon_spent_after = serializers.FloatField()
    actor = serializers.CharField()
    created_at = serializers.DateTimeField()
    payload = serializers.JSONField()
    prev_hash = serializers.CharField()
    entry_hash = serializers.CharField()

    class Meta:
        ref_name = "LedgerEntry"

    def to_representation(self, entry: LedgerEntry) -> dict:
        return {"id": entry.pk, **entry.document()}


class BudgetOutput(serializers.Serializer):
    dataset = serializers.CharField()
    epsilon_budget = serializers.FloatField()
    delta = serializers.FloatField()
    accountant = serializers.CharField()
    epsilon_spent = serializers.FloatField()
    epsilon_remaining = serializers.FloatField()
    entries = serializers.IntegerField()
    head_hash = serializers.CharField(help_text="Hash of the chain's last entry.")
    open_reservations = serializers.ListField(child=serializers.IntegerField(), help_text="Rounds holding a reservation.")

    class Meta:
        ref_name = "DatasetBudget"


class VerificationOutput(serializers.Serializer):
    dataset = serializers.CharField()
    ok = serializers.BooleanField()
    entries = serializers.IntegerField(help_text="Entries verified (up to the first bad one).")
    signed_heads = serializers.IntegerField()
    epsilon_spent = serializers.FloatField()
    epsilon_budget = serializers.FloatField()
    open_reservations = serializers.ListField(child=serializers.IntegerField())
    first_bad_entry = serializers.IntegerField(allow_null=True, help_text="Sequence number of the first bad entry.")
    error = serializers.CharField(allow_null=True)
    verified_at = serializers.DateTimeField()

    class Meta:
        ref_name = "LedgerVerification"


class LedgerView(ApiView):
    """Base: the dataset named in the URL, readable as a ledger by the requester."""

    object_name = "Dataset"

    def object_queryset(self):
        return datasets_for(user=self.request.user)

    def get_ledger_dataset(self) -> Dataset:
        """The dataset, if the requester reads its ledger; else 404 or 403 (see module doc and
        `selectors.ledger.ledger_dataset_by_pk`)."""
        return ledger_dataset_by_pk(user=self.request.user, pk=valid_pk(self.kwargs.get("pk")))


class LedgerEntryListView(LedgerView):
    """The dataset's ledger, oldest first; filter by round, kind and time."""

    queryset = LedgerEntry.objects.none()  # for the schema: the model the filters describe
    filterset_class = LedgerEntryFilter
    ordering_fields = ["seq", "created_at"]

    @extend_schema(operation_id="datasets_ledger_list", responses=LedgerEntryOutput(many=True))
    def get(self, request, pk: int):
        dataset = self.get_ledger_dataset()
        return self.list_response(accounting.ledger_entries(dataset=dataset), LedgerEntryOutput)


class LedgerVerificationView(LedgerView):
    """Replay the dataset's hash chain, signed heads and running composition now, as an
    auditor's offline verification of a bundle does."""

    @extend_schema(operation_id="datasets_ledger_verification", responses=VerificationOutput)
    def get(self, request, pk: int):
        result = audit.verify_dataset(self.get_ledger_dataset())
        return self.output(
            VerificationOutput,
            {
                "dataset": result.dataset,
                "ok": result.ok,
                "entries": result.entries,
                "signed_heads": result.signed_heads,
                "epsilon_spent": result.epsilon_spent,
                "epsilon_budget": result.epsilon_budget,
                "open_reservations": result.open_reservations or [],
                "first_bad_entry": result.bad_seq,
                "error": str(result.error) if result.error else None,
                "verified_at": timezone.now(),
            },
        )


class DatasetBudgetView(LedgerView):
    """GET: the dataset's budget, spent and remaining epsilon (ledger readers). POST: raise
    the budget within the agreement's terms (its organisation's representatives and the
    administrators): a new GRANT on the ledger."""

    required_scope = {"GET": "read", "POST": "approve"}

    class InputSerializer(Input):
        epsilon_budget = serializers.FloatField(help_text="The new, higher, budget.")

        class Meta:
            ref_name = "BudgetRaiseInput"

    @extend_schema(operation_id="datasets_budget_retrieve", responses=BudgetOutput)
    def get(self, request, pk: int):
        return self.output(BudgetOutput, accounting.dataset_budget_summary(dataset=self.get_ledger_dataset()))

    @extend_schema(operation_id="datasets_budget_raise", request=InputSerializer, responses=BudgetOutput)
    def post(self, request, pk: int):
        dataset = self.get_object()
        data = self.validated_input(self.InputSerializer)
        dataset = dataset_raise_budget(actor=request.user, dataset=dataset, epsilon_budget=data["epsilon_budget"])
        return self.output(BudgetOutput, accounting.dataset_budget_summary(dataset=dataset))
