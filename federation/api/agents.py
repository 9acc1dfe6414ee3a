"""Partner agents as the coordinator sees them (/api/v1/agents/): administrators see every
organisation's, a representative its own organisations'. Per organisation: whether its agent
is enrolled, its last poll and whether that makes it online, the software it runs, the
agreements whose terms it holds (and whether they are the current ones), its refusals."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from fedgov.errors import PermissionDenied

from ..access import agent_organisations
from ..selectors.organisations import agent_organisations_for, organisations_for
from ..services.agents import agents_overview
from .base import ApiView
from .filters import AgentFilter

MSG_AGENT_FORBIDDEN = "Only the administrators and the representatives of {organisation} see its partner agent."
REFUSALS_IN_LIST = 20


class TermsHeldOutput(serializers.Serializer):
    agreement = serializers.IntegerField()
    terms_hash = serializers.CharField()
    current = serializers.BooleanField(help_text="The agreement is active and these are its terms now.")

    class Meta:
        ref_name = "AgentTermsHeld"


class RefusalOutput(serializers.Serializer):
    round = serializers.IntegerField(source="round_id")
    round_number = serializers.IntegerField(source="round.number")
    plan = serializers.IntegerField(source="round.plan_id")
    dataset = serializers.CharField(source="dataset.slug")
    code = serializers.CharField(source="refusal_code")
    reason = serializers.CharField(source="refusal_reason")
    explanation = serializers.CharField(source="refusal_words", help_text="What the code means, in plain words ('' if unknown).")
    refused_at = serializers.DateTimeField()

    class Meta:
        ref_name = "AgentRefusalRecord"


class AgentOutput(serializers.Serializer):
    organisation = serializers.IntegerField(source="organisation.pk")
    organisation_slug = serializers.CharField(source="organisation.slug")
    enrolled = serializers.BooleanField()
    enrolled_at = serializers.DateTimeField(source="identity.enrolled_at", allow_null=True, default=None)
    public_key = serializers.CharField(source="identity.public_key", allow_null=True, default=None)
    last_seen_at = serializers.DateTimeField(source="status.last_seen_at", allow_null=True, default=None)
    online = serializers.BooleanField()
    software_version = serializers.CharField(source="status.software_version", default="")
    terms_held = TermsHeldOutput(source="terms", many=True)
    terms_updated_at = serializers.DateTimeField(source="status.terms_updated_at", allow_null=True, default=None)
    refusals = RefusalOutput(many=True)

    class Meta:
        ref_name = "Agent"


class AgentListView(ApiView):
    """Partner agents you may see, one per organisation, each with its last 20 refusals."""

    filterset_class = AgentFilter
    ordering_fields = ["name", "slug"]
    ordering = ["name"]

    def get_queryset(self):
        return agent_organisations_for(user=self.request.user)

    @extend_schema(operation_id="agents_list", responses=AgentOutput(many=True))
    def get(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        views = {v.organisation.pk: v for v in agents_overview(agent_organisations(request.user).filter(pk__in=[o.pk for o in page]), refusals=REFUSALS_IN_LIST)}
        return self.get_paginated_response(AgentOutput([views[o.pk] for o in page], many=True).data)


class AgentDetailView(ApiView):
    """One organisation's partner agent, with every refusal (the URL names the organisation)."""

    object_name = "Agent"

    def object_queryset(self):
        return organisations_for(user=self.request.user)

    @extend_schema(operation_id="agents_retrieve", responses=AgentOutput)
    def get(self, request, pk: int):
        organisation = self.get_object()
        scoped = agent_organisations(request.user).filter(pk=organisation.pk)
        if not scoped.exists():
            raise PermissionDenied(MSG_AGENT_FORBIDDEN.format(organisation=organisation.name))
        return self.output(AgentOutput, agents_overview(scoped, refusals=None)[0])
