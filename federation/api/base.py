"""What every API view shares: authentication, scopes, pagination, filtering, and the one
place that loads an object and checks who may see it (ARCHITECTURE.md, Conventions 8).

The rule everywhere: someone with no relation to an object gets 404 (its existence is not
revealed); someone who may see it but not do this gets 403. The visibility querysets live
and the guards in `federation.access`; the services call the guards again. A view never decides a
domain rule of its own.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import filters, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from fedgov import strictjson
from fedgov.errors import NotFound

from .auth import HasScope
from .errors import MSG_MALFORMED_JSON, MalformedJson, NonFiniteNumber
from .fields import valid_pk
from .schema import FedgovAutoSchema

MSG_NOT_FOUND = "{what} not found."


class StrictJSONParser(JSONParser):
    """JSON as the standard defines it: a body that is not JSON is `malformed_json`; NaN,
    Infinity and numbers too large for a float are `non_finite_number`, naming the field."""

    def parse(self, stream, media_type=None, parser_context=None):
        return parse_json(stream.read(), encoding=(parser_context or {}).get("encoding") or "utf-8")


def parse_json(raw: bytes, *, encoding: str = "utf-8"):
    """`raw` as strict JSON, or MalformedJson / NonFiniteNumber (both 400)."""
    try:
        return strictjson.loads(raw.decode(encoding))
    except strictjson.NonFiniteNumber as exc:
        raise NonFiniteNumber(exc.path) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise MalformedJson(MSG_MALFORMED_JSON.format(error=exc)) from None


BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ReadsBody:
    """Mixin for API views: the body of every write is parsed before the handler runs, even
    when the handler reads no field, so a malformed body is refused (400, nothing written)
    rather than ignored (a body of another media type is 415, one with none too)."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method in BODY_METHODS:
            request.data  # noqa: B018 -- parsing is the point: errors surface here


class Pagination(PageNumberPagination):
    """`?page=N&page_size=M` (at most 200 per page); the body says `count`, `next`, `previous`.

    A page_size that is not a positive number is refused (400), not silently replaced by the
    default: a client asking for something else than it gets deserves to know."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise ValidationError({self.page_size_query_param: ["A positive whole number."]})
        return min(size, self.max_page_size)


def _json_type_error(field: serializers.Field, value) -> str | None:
    """Why `value` (parsed JSON) is not of the JSON type `field` declares, or None.

    DRF coerces generously (the number 5 is accepted as the text "5", the text "5" as the
    number 5); a JSON API documents types, so a value of the wrong type is refused instead.
    """
    if value is None:
        return None  # allow_null decides
    if isinstance(field, (serializers.ManyRelatedField, serializers.ListField)):
        if not isinstance(value, list):
            return "Expected a list."
        child = field.child_relation if isinstance(field, serializers.ManyRelatedField) else field.child
        return next((e for e in (_json_type_error(child, v) for v in value) if e), None)
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "Expected true or false."
    if isinstance(value, bool):  # a bool is an int to Python, never to JSON
        return "Expected a value of the documented type, not true or false." if _typed(field) else None
    if isinstance(field, (serializers.IntegerField, serializers.PrimaryKeyRelatedField)):
        return None if isinstance(value, int) else "Expected a whole number."
    if isinstance(field, serializers.FloatField):
        return None if isinstance(value, (int, float)) else "Expected a number."
    if isinstance(field, (serializers.CharField, serializers.ChoiceField, serializers.SlugRelatedField, serializers.DateField)):
        return None if isinstance(value, str) else "Expected text."
    if isinstance(field, (serializers.DictField, serializers.Serializer)):
        return None if isinstance(value, dict) else "Expected an object."
    return None


_TYPED = (
    serializers.IntegerField,
    serializers.PrimaryKeyRelatedField,
    serializers.FloatField,
    serializers.CharField,
    serializers.ChoiceField,
    serializers.SlugRelatedField,
    serializers.DateField,
    serializers.DictField,
    serializers.Serializer,
)


def _typed(field: serializers.Field) -> bool:
    return isinstance(field, _TYPED)


class Input(serializers.Serializer):
    """Base of every request body: JSON types are checked before DRF's own validation."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            errors = {}
            for name, field in self.fields.items():
                if not field.read_only and field.field_name in data:
                    error = _json_type_error(field, data[field.field_name])
                    if error:
                        errors[name] = [error]
            if errors:
                raise ValidationError(errors)
        return super().to_internal_value(data)


class NoInput(Input):
    """The body of an action that takes none."""


class FilterBackend(DjangoFilterBackend):
    """django-filter, skipped when the request names none of the view's filters: building
    and validating the filter form costs as much as a query, and an unfiltered list (the
    common case) does not need it."""

    def filter_queryset(self, request, queryset, view):
        filterset_class = getattr(view, "filterset_class", None)
        if filterset_class is not None and not set(request.query_params).intersection(filterset_class.base_filters):
            return queryset
        return super().filter_queryset(request, queryset, view)


class ApiView(ReadsBody, GenericAPIView):
    """Base of every fedgov API view.

    `required_scope` is the token scope the view needs, either one name or a mapping of
    HTTP method to name (see `federation.api.auth.HasScope`); reads default to `read`.
    """

    schema = FedgovAutoSchema()
    # JSON only: one body format to validate, document and test (415 for anything else).
    parser_classes = [StrictJSONParser]
    permission_classes = [IsAuthenticated, HasScope]
    pagination_class = Pagination
    filter_backends = [FilterBackend, filters.OrderingFilter]
    required_scope: str | dict[str, str] | None = None

    # Objects addressed by the URL (`<int:pk>`) are loaded from `object_queryset()`, the
    # requester's visible set, before the handler runs: nothing to see means 404.
    object_name = "Object"

    def get_serializer_class(self):
        # What the browsable API's forms show: the view's body, or nothing for actions
        # that take none. (The OpenAPI schema reads the explicit extend_schema instead.)
        return getattr(self, "InputSerializer", None) or NoInput

    def object_queryset(self) -> QuerySet:
        raise NotImplementedError

    def get_object(self):
        pk = valid_pk(self.kwargs.get("pk"))
        # [:1] and order_by(), not first(): no ORDER BY (the model's default ordering) to
        # add and compile for a primary-key lookup.
        obj = next(iter(self.object_queryset().filter(pk=pk).order_by()[:1]), None) if pk is not None else None
        if obj is None:
            raise NotFound(MSG_NOT_FOUND.format(what=self.object_name))
        return obj

    def list_response(self, queryset: QuerySet, serializer_class) -> Response:
        """Filter, order and paginate `queryset`, then serialise one page."""
        queryset = self.filter_queryset(queryset)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(serializer_class(page, many=True, context=self.context_for(page)).data)

    def output(self, serializer_class, instance, *, status_code: int = status.HTTP_200_OK, headers=None) -> Response:
        data = serializer_class(instance, context=self.context_for([instance])).data
        return Response(data, status=status_code, headers=headers)

    def context_for(self, objects: list) -> dict:
        """Serializer context for `objects`, the rows about to be serialised: a view adds what
        it reads for the whole page at once (so a page costs the same queries as one row)."""
        return self.get_serializer_context()

    def validated_input(self, serializer_class) -> dict:
        serializer = serializer_class(data=self.request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def no_content(self) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)
