"""REST API views: one per operation, thin (ARCHITECTURE.md, Conventions 2)."""

from __future__ import annotations

from django.db import connection
from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView


class HealthView(APIView):
    """Liveness: the web process answers and its database is reachable."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(responses=inline_serializer("Health", {"status": serializers.CharField(), "database": serializers.CharField()}))
    def get(self, request):
        connection.ensure_connection()
        if not connection.is_usable():  # a kept connection the database dropped: connect again (or fail)
            connection.close()
            connection.ensure_connection()
        return Response({"status": "ok", "database": connection.vendor})


# The collections a client starts from, by name; each links on to its items.
INDEX_RESOURCES = (
    ("health", "api:health"),
    ("auth_token", "api:auth-token"),
    ("tokens", "api:tokens"),
    ("organisations", "api:organisations"),
    ("memberships", "api:memberships"),
    ("agreements", "api:agreements"),
    ("datasets", "api:datasets"),
    ("plans", "api:plans"),
    ("rounds", "api:rounds"),
    ("events", "api:events"),
    ("model_versions", "api:model-versions"),
)


class IndexView(APIView):
    """/api/v1/: the API's resources and where its schema and docs are. Public, like the
    schema: it names URLs, never data."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        tags=["index"],
        responses=inline_serializer(
            "ApiIndex",
            {
                "version": serializers.CharField(),
                "resources": serializers.DictField(child=serializers.URLField()),
                "schema": serializers.URLField(),
                "docs": serializers.URLField(),
            },
        ),
    )
    def get(self, request):
        def url(name: str) -> str:
            return request.build_absolute_uri(reverse(name))

        return Response(
            {
                "version": "v1",
                "resources": {key: url(name) for key, name in INDEX_RESOURCES},
                "schema": url("api-schema"),
                "docs": url("api-docs"),
            }
        )
