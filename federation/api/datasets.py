"""Datasets (metadata only: the records stay at the partner) with their remaining budget."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status

from accounting.selectors import datasets_budget_figures

from ..access import visible_agreements, visible_organisations
from ..learning import TRANSFORMS
from ..models import Dataset
from ..selectors.datasets import datasets_for
from ..services.datasets import dataset_register
from .base import ApiView, Input
from .fields import VisibleRelatedField
from .filters import DatasetFilter

TRANSFORM_CHOICES = sorted(name for name in TRANSFORMS if name != "none")


class DatasetOutput(serializers.ModelSerializer):
    organisation_slug = serializers.CharField(source="organisation.slug")
    feature_names = serializers.ListField(child=serializers.CharField())
    label_classes = serializers.ListField(child=serializers.CharField())
    feature_bounds = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    feature_transforms = serializers.DictField(child=serializers.CharField())
    epsilon_spent = serializers.SerializerMethodField(
        help_text="Epsilon spent at the dataset's delta: committed and open reservations."
    )
    epsilon_remaining = serializers.SerializerMethodField(help_text="Budget minus spent.")

    class Meta:
        model = Dataset
        fields = [
            "id",
            "slug",
            "name",
            "organisation",
            "organisation_slug",
            "agreement",
            "record_count",
            "feature_names",
            "label_name",
            "label_classes",
            "feature_bounds",
            "feature_transforms",
            "centred",
            "epsilon_budget",
            "delta",
            "accountant",
            "epsilon_spent",
            "epsilon_remaining",
            "created_at",
        ]
        ref_name = "Dataset"

    @extend_schema_field(serializers.FloatField())
    def get_epsilon_spent(self, dataset: Dataset) -> float:
        return self.context["budgets"][dataset.pk].epsilon_spent

    @extend_schema_field(serializers.FloatField())
    def get_epsilon_remaining(self, dataset: Dataset) -> float:
        return self.context["budgets"][dataset.pk].epsilon_remaining


class DatasetViewMixin:
    def context_for(self, objects):
        return {**super().context_for(objects), "budgets": datasets_budget_figures(datasets=objects)}


class DatasetListView(DatasetViewMixin, ApiView):
    """Datasets of the agreements you are a party to or audit (administrators: all)."""

    required_scope = {"GET": "read", "POST": "approve"}
    filterset_class = DatasetFilter
    ordering_fields = ["slug", "name", "created_at", "epsilon_budget", "record_count"]

    class InputSerializer(Input):
        organisation = VisibleRelatedField(visible=visible_organisations)
        agreement = VisibleRelatedField(visible=visible_agreements)
        slug = serializers.SlugField(max_length=64)
        name = serializers.CharField(max_length=200)
        record_count = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        feature_names = serializers.ListField(child=serializers.CharField(max_length=200), min_length=1, max_length=10_000)
        label_name = serializers.CharField(max_length=200)
        label_classes = serializers.ListField(child=serializers.CharField(max_length=200), min_length=2, max_length=10_000)
        feature_bounds = serializers.ListField(
            child=serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2),
            min_length=1,
            max_length=10_000,
            help_text="Public [low, high] per feature, in feature order.",
        )
        feature_transforms = serializers.DictField(
            child=serializers.ChoiceField(choices=TRANSFORM_CHOICES),
            required=False,
            default=dict,
            help_text="Public transform applied to a feature before scaling, by feature name (features need a lower bound >= 0).",
        )
        centred = serializers.BooleanField(required=False, default=False, help_text="Scale features to [-1, 1] instead of [0, 1].")
        epsilon_budget = serializers.FloatField()
        delta = serializers.FloatField()
        accountant = serializers.ChoiceField(choices=Dataset.Accountant.choices, default=Dataset.Accountant.RDP)

        class Meta:
            ref_name = "DatasetInput"

    def get_queryset(self):
        return datasets_for(user=self.request.user)

    @extend_schema(operation_id="datasets_list", responses=DatasetOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), DatasetOutput)

    @extend_schema(operation_id="datasets_create", request=InputSerializer, responses={201: DatasetOutput})
    def post(self, request):
        data = self.validated_input(self.InputSerializer)
        dataset = dataset_register(actor=request.user, **data)
        return self.output(DatasetOutput, dataset, status_code=status.HTTP_201_CREATED)


class DatasetDetailView(DatasetViewMixin, ApiView):
    object_name = "Dataset"

    def object_queryset(self):
        return datasets_for(user=self.request.user)

    @extend_schema(operation_id="datasets_retrieve", responses=DatasetOutput)
    def get(self, request, pk: int):
        return self.output(DatasetOutput, self.get_object())
