"""Global model versions: metadata for everyone who sees the plan, parameters for its parties."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers

from ..access import require_party_member
from ..models import ModelVersion
from ..selectors.model_versions import downloadable_model_versions, model_versions_for
from .base import ApiView
from .filters import ModelVersionFilter


class ModelVersionOutput(serializers.ModelSerializer):
    size_bytes = serializers.IntegerField(help_text="Size of the parameters (a flat float32 vector).")
    metrics = serializers.DictField()

    class Meta:
        model = ModelVersion
        fields = ["id", "plan", "round", "version", "sha256", "size_bytes", "metrics", "created_at"]
        ref_name = "ModelVersion"


class ModelVersionListView(ApiView):
    """Global models of the plans you can see: version 0 is a plan's initial model, version
    n the result of its round n."""

    filterset_class = ModelVersionFilter
    ordering_fields = ["created_at", "version"]

    def get_queryset(self):
        return model_versions_for(user=self.request.user).order_by("plan_id", "version")

    @extend_schema(operation_id="model_versions_list", responses=ModelVersionOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), ModelVersionOutput)


class ModelVersionDetailView(ApiView):
    object_name = "Model version"

    def object_queryset(self):
        return model_versions_for(user=self.request.user)

    @extend_schema(operation_id="model_versions_retrieve", responses=ModelVersionOutput)
    def get(self, request, pk: int):
        return self.output(ModelVersionOutput, self.get_object())


class ModelVersionParamsView(ApiView):
    """The parameters as raw bytes (little-endian float32), for the parties to the plan's
    agreement only; compare their SHA-256 with `sha256` (also in the `X-Content-SHA256`
    header)."""

    object_name = "Model version"

    def object_queryset(self):
        return downloadable_model_versions(user=self.request.user)

    def perform_content_negotiation(self, request, force=False):
        # The body is bytes, written below without a renderer; errors are JSON whatever the
        # client's Accept header says, so negotiation never refuses the request.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="model_versions_params",
        responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="The parameters.")},
    )
    def get(self, request, pk: int):
        version = self.get_object()
        require_party_member(request.user, version.plan)
        response = HttpResponse(bytes(version.params), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="plan{version.plan_id}-v{version.version}.f32"'
        response["X-Content-SHA256"] = version.sha256
        return response
