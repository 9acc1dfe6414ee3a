"""The governance history: every change of governance state, with actor and time."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers

from ..models import GovernanceEvent
from ..selectors.events import event_feed_for
from .base import ApiView
from .filters import EventFilter


class EventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name")
    details = serializers.DictField()

    class Meta:
        model = GovernanceEvent
        fields = ["id", "kind", "agreement", "organisation", "round", "actor", "message", "details", "created_at"]
        ref_name = "GovernanceEvent"


class EventListView(ApiView):
    """Governance events, newest first: administrators see all; an agreement's parties'
    representatives and its auditors (when its terms grant them the governance history)
    see that agreement's."""

    filterset_class = EventFilter
    ordering_fields = ["created_at", "id"]

    def get_queryset(self):
        return event_feed_for(user=self.request.user)

    @extend_schema(operation_id="events_list", responses=EventOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), EventOutput)
