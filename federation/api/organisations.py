"""Organisations and memberships: administrators register them; everyone sees their own."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status

from ..access import require_administrator
from ..models import Membership, Organisation
from ..selectors.organisations import memberships_for, organisations_for
from ..services.organisations import membership_add, membership_remove, organisation_create
from .base import ApiView, Input
from .filters import MembershipFilter, OrganisationFilter

User = get_user_model()


@extend_schema_field({"type": "string", "enum": Organisation.Kind.values})
class KindField(serializers.CharField):
    """An organisation's kind, documented as a plain enum of its own: the input's choice set
    is the same, and sharing one name across the two components makes drf-spectacular warn
    (a warning `manage.py check --deploy` would show)."""


class OrganisationOutput(serializers.ModelSerializer):
    kind = KindField()

    class Meta:
        model = Organisation
        fields = ["id", "slug", "name", "kind", "created_at"]
        ref_name = "Organisation"


class OrganisationListView(ApiView):
    """Organisations you belong to or share an agreement with (administrators: all)."""

    required_scope = {"GET": "read", "POST": "approve"}
    filterset_class = OrganisationFilter
    ordering_fields = ["name", "slug", "created_at"]

    class InputSerializer(Input):
        slug = serializers.SlugField(max_length=64)
        name = serializers.CharField(max_length=200)
        kind = serializers.ChoiceField(choices=Organisation.Kind.choices, default=Organisation.Kind.OTHER)

        class Meta:
            ref_name = "OrganisationInput"

    def get_queryset(self):
        return organisations_for(user=self.request.user)

    @extend_schema(operation_id="organisations_list", responses=OrganisationOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), OrganisationOutput)

    @extend_schema(operation_id="organisations_create", request=InputSerializer, responses={201: OrganisationOutput})
    def post(self, request):
        require_administrator(request.user, what="organisation", action="create")
        data = self.validated_input(self.InputSerializer)
        organisation = organisation_create(actor=request.user, **data)
        return self.output(OrganisationOutput, organisation, status_code=status.HTTP_201_CREATED)


class OrganisationDetailView(ApiView):
    object_name = "Organisation"

    def object_queryset(self):
        return organisations_for(user=self.request.user)

    @extend_schema(operation_id="organisations_retrieve", responses=OrganisationOutput)
    def get(self, request, pk: int):
        return self.output(OrganisationOutput, self.get_object())


class MembershipOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    organisation_slug = serializers.CharField(source="organisation.slug")

    class Meta:
        model = Membership
        fields = ["id", "user", "organisation", "organisation_slug", "role", "created_at"]
        ref_name = "Membership"


class MembershipListView(ApiView):
    """Your memberships (administrators: everyone's)."""

    required_scope = {"GET": "read", "POST": "approve"}
    filterset_class = MembershipFilter
    ordering_fields = ["created_at", "role"]

    class InputSerializer(Input):
        user = serializers.SlugRelatedField(slug_field="username", queryset=User.objects.all())
        organisation = serializers.PrimaryKeyRelatedField(queryset=Organisation.objects.all())
        role = serializers.ChoiceField(choices=Membership.Role.choices)

        class Meta:
            ref_name = "MembershipInput"

    def get_queryset(self):
        return memberships_for(user=self.request.user)

    @extend_schema(operation_id="memberships_list", responses=MembershipOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), MembershipOutput)

    @extend_schema(operation_id="memberships_create", request=InputSerializer, responses={201: MembershipOutput})
    def post(self, request):
        # Before reading the body: only an administrator may learn which usernames exist.
        require_administrator(request.user, what="membership", action="create")
        data = self.validated_input(self.InputSerializer)
        membership = membership_add(actor=request.user, **data)
        return self.output(MembershipOutput, membership, status_code=status.HTTP_201_CREATED)


class MembershipDetailView(ApiView):
    object_name = "Membership"
    required_scope = {"GET": "read", "DELETE": "approve"}

    def object_queryset(self):
        return memberships_for(user=self.request.user)

    @extend_schema(operation_id="memberships_retrieve", responses=MembershipOutput)
    def get(self, request, pk: int):
        return self.output(MembershipOutput, self.get_object())

    @extend_schema(operation_id="memberships_destroy", responses={204: None})
    def delete(self, request, pk: int):
        membership_remove(actor=request.user, membership=self.get_object())
        return self.no_content()
