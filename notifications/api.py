"""REST API of notifications: your inbox, your preferences, your organisations' webhooks.

Thin views (ARCHITECTURE.md, Conventions 2): input serializer, service, output serializer.
Everyone reads and marks only their own notifications; administrators and an organisation's
representatives manage its webhooks (services.require_webhook_manager, on federation.access).
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from federation.access import visible_organisations
from federation.api.base import ApiView, Input

from . import selectors, services
from .models import Delivery, DeliveryAttempt, Kind, Notification, Webhook


@extend_schema_field({"type": "string", "enum": Kind.values})
class NotificationKindField(serializers.CharField):
    """A notification kind, documented as a plain enum of its own (a shared component name
    with the other `kind` enums would make drf-spectacular warn). The services refuse an
    unknown kind with a 400 that names the choices."""


class NotificationOutput(serializers.ModelSerializer):
    kind = NotificationKindField()
    read = serializers.BooleanField(source="is_read")

    class Meta:
        model = Notification
        fields = ["id", "kind", "title", "body", "link", "event", "created_at", "read_at", "read"]
        ref_name = "Notification"


def _unread_param(request) -> bool | None:
    raw = request.query_params.get("unread")
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ValidationError({"unread": ["true or false."]})


class NotificationListView(ApiView):
    """Your notifications, newest first; `?unread=true` for the unread ones only."""

    queryset = Notification.objects.none()

    def get_queryset(self):
        return selectors.notifications_for(self.request.user)

    @extend_schema(
        operation_id="notifications_list",
        parameters=[OpenApiParameter("unread", bool, description="true: unread only; false: read only.")],
        responses=NotificationOutput(many=True),
    )
    def get(self, request):
        qs = selectors.notifications_for(request.user, unread=_unread_param(request))
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(NotificationOutput(page, many=True).data)


class NotificationReadView(ApiView):
    """Mark one of your notifications read (another's is 404)."""

    required_scope = {"POST": "read"}
    queryset = Notification.objects.none()

    @extend_schema(operation_id="notifications_read", request=None, responses=NotificationOutput)
    def post(self, request, pk: int):
        return self.output(NotificationOutput, services.notification_mark_read(user=request.user, notification_id=pk))


class NotificationReadAllView(ApiView):
    """Mark every one of your notifications read."""

    required_scope = {"POST": "read"}

    @extend_schema(
        operation_id="notifications_read_all",
        request=None,
        responses=inline_serializer("NotificationsMarked", {"marked": serializers.IntegerField()}),
    )
    def post(self, request):
        return Response({"marked": services.notifications_mark_all_read(user=request.user)})


class PreferenceSerializer(Input):
    kind = NotificationKindField(max_length=32)
    in_app = serializers.BooleanField(required=False)
    email = serializers.BooleanField(required=False)

    class Meta:
        ref_name = "NotificationPreferenceInput"


class PreferenceOutput(serializers.Serializer):
    kind = NotificationKindField()
    label = serializers.CharField()
    in_app = serializers.BooleanField()
    email = serializers.BooleanField()

    class Meta:
        ref_name = "NotificationPreference"


class PreferencesView(ApiView):
    """Which notifications you receive, per kind: in the app, by email, both or neither."""

    required_scope = {"GET": "read", "PUT": "read"}
    pagination_class = None
    queryset = Notification.objects.none()

    class InputSerializer(Input):
        preferences = PreferenceSerializer(many=True, allow_empty=False)

        class Meta:
            ref_name = "NotificationPreferencesInput"

        def to_internal_value(self, data):
            if isinstance(data, dict) and not isinstance(data.get("preferences"), list):
                raise ValidationError({"preferences": ["Expected a list."]})
            return super().to_internal_value(data)

    @extend_schema(operation_id="notification_preferences_get", responses=PreferenceOutput(many=True))
    def get(self, request):
        return Response(PreferenceOutput(selectors.preferences_for(request.user), many=True).data)

    @extend_schema(operation_id="notification_preferences_update", request=InputSerializer, responses=PreferenceOutput(many=True))
    def put(self, request):
        data = self.validated_input(self.InputSerializer)
        prefs = services.preferences_update(user=request.user, preferences=[dict(p) for p in data["preferences"]])
        return Response(PreferenceOutput(prefs, many=True).data)


class WebhookOutput(serializers.ModelSerializer):
    kinds = serializers.ListField(child=NotificationKindField())

    class Meta:
        model = Webhook
        fields = ["id", "organisation", "url", "kinds", "active", "created_at"]
        ref_name = "Webhook"


class NewWebhookOutput(WebhookOutput):
    """The webhook with its signing secret: shown once, when it is created."""

    class Meta(WebhookOutput.Meta):
        fields = [*WebhookOutput.Meta.fields, "secret"]
        ref_name = "NewWebhook"


class AttemptOutput(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "started_at", "finished_at", "ok", "status_code", "error"]
        ref_name = "DeliveryAttempt"


class DeliveryOutput(serializers.ModelSerializer):
    kind = NotificationKindField()
    log = AttemptOutput(many=True)

    class Meta:
        model = Delivery
        fields = ["id", "idempotency_key", "kind", "target", "status", "attempts", "next_attempt_at", "last_error",
                  "delivered_at", "created_at", "log"]
        ref_name = "WebhookDelivery"


class OrganisationWebhooksView(ApiView):
    """An organisation's webhooks (administrators and its representatives). Creating one
    answers its signing secret, once."""

    object_name = "Organisation"
    required_scope = {"GET": "read", "POST": "approve"}
    queryset = Webhook.objects.none()

    class InputSerializer(Input):
        url = serializers.URLField(max_length=500)
        kinds = serializers.ListField(child=NotificationKindField(max_length=32), required=False, max_length=len(Kind.values))

        class Meta:
            ref_name = "WebhookInput"

    def object_queryset(self):
        return visible_organisations(self.request.user)

    @extend_schema(operation_id="organisation_webhooks_list", responses=WebhookOutput(many=True))
    def get(self, request, pk: int):
        organisation = self.get_object()
        services.require_webhook_manager(request.user, organisation)
        page = self.paginate_queryset(selectors.webhooks_of(organisation))
        return self.get_paginated_response(WebhookOutput(page, many=True).data)

    @extend_schema(operation_id="organisation_webhooks_create", request=InputSerializer, responses={201: NewWebhookOutput})
    def post(self, request, pk: int):
        organisation = self.get_object()
        services.require_webhook_manager(request.user, organisation)
        data = self.validated_input(self.InputSerializer)
        webhook = services.webhook_create(actor=request.user, organisation=organisation, url=data["url"], kinds=data.get("kinds"))
        return self.output(NewWebhookOutput, webhook, status_code=status.HTTP_201_CREATED)


class WebhookMixin:
    object_name = "Webhook"
    queryset = Webhook.objects.none()

    def object_queryset(self):
        visible = visible_organisations(self.request.user).values("id")
        return Webhook.objects.filter(organisation_id__in=visible).select_related("organisation")

    def managed_webhook(self) -> Webhook:
        webhook = self.get_object()
        services.require_webhook_manager(self.request.user, webhook.organisation)
        return webhook


class WebhookDetailView(WebhookMixin, ApiView):
    """One webhook; DELETE deactivates it (its delivery log stays) and cancels what it had pending."""

    required_scope = {"GET": "read", "DELETE": "approve"}

    @extend_schema(operation_id="webhooks_retrieve", responses=WebhookOutput)
    def get(self, request, pk: int):
        return self.output(WebhookOutput, self.managed_webhook())

    @extend_schema(operation_id="webhooks_deactivate", request=None, responses=WebhookOutput)
    def delete(self, request, pk: int):
        return self.output(WebhookOutput, services.webhook_deactivate(actor=request.user, webhook=self.managed_webhook()))


class WebhookDeliveriesView(WebhookMixin, ApiView):
    """The webhook's delivery log, newest first: each delivery and each of its attempts."""

    @extend_schema(operation_id="webhooks_deliveries", responses=DeliveryOutput(many=True))
    def get(self, request, pk: int):
        page = self.paginate_queryset(selectors.webhook_deliveries(self.managed_webhook()))
        return self.get_paginated_response(DeliveryOutput(page, many=True).data)
