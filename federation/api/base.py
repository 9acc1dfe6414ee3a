"""What every API view shares: authentication, scopes, pagination, filtering, and the one
place that loads an object and checks who may see it (STYLE.md 8).

The rule everywhere: someone with no relation to an object gets 404 (its existence is not
revealed); someone who may see it but not do this gets 403. The visibility querysets live
in `federation.permissions`; the write guards in the services. A view never decides a
domain rule of its own.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import filters, status
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from fedgov.errors import NotFound

from .auth import HasScope
from .fields import valid_pk
from .schema import FedgovAutoSchema

MSG_NOT_FOUND = "{what} not found."


class Pagination(PageNumberPagination):
    """`?page=N&page_size=M` (at most 200 per page); the body says `count`, `next`, `previous`."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class ApiView(GenericAPIView):
    """Base of every fedgov API view.

    `required_scope` is the token scope the view needs, either one name or a mapping of
    HTTP method to name (see `federation.api.auth.HasScope`); reads default to `read`.
    """

    schema = FedgovAutoSchema()
    permission_classes = [IsAuthenticated, HasScope]
    pagination_class = Pagination
    filter_backends = [DjangoFilterBackend, filters.OrderingFilter]
    required_scope: str | dict[str, str] | None = None

    # Objects addressed by the URL (`<int:pk>`) are loaded from `object_queryset()`, the
    # requester's visible set, before the handler runs: nothing to see means 404.
    object_name = "Object"

    def object_queryset(self) -> QuerySet:
        raise NotImplementedError

    def get_object(self):
        pk = valid_pk(self.kwargs.get("pk"))
        obj = self.object_queryset().filter(pk=pk).first() if pk is not None else None
        if obj is None:
            raise NotFound(MSG_NOT_FOUND.format(what=self.object_name))
        return obj

    def list_response(self, queryset: QuerySet, serializer_class) -> Response:
        """Filter, order and paginate `queryset`, then serialise one page."""
        queryset = self.filter_queryset(queryset)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializer_class(page, many=True, context=self.get_serializer_context()).data)

    def output(self, serializer_class, instance, *, status_code: int = status.HTTP_200_OK, headers=None) -> Response:
        return Response(serializer_class(instance, context=self.get_serializer_context()).data, status=status_code, headers=headers)

    def validated_input(self, serializer_class) -> dict:
        serializer = serializer_class(data=self.request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def no_content(self) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)
