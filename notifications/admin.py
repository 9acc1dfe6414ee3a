"""Read-only admin: notifications and deliveries change through their services only."""

from django.contrib import admin

from .models import Delivery, Notification, Webhook


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Notification)
class NotificationAdmin(ReadOnly):
    list_display = ["created_at", "recipient", "kind", "title", "read_at"]
    list_filter = ["kind"]


@admin.register(Delivery)
class DeliveryAdmin(ReadOnly):
    list_display = ["created_at", "channel", "kind", "target", "status", "attempts", "delivered_at"]
    list_filter = ["channel", "status", "kind"]


@admin.register(Webhook)
class WebhookAdmin(ReadOnly):
    list_display = ["organisation", "url", "active", "created_at"]
    exclude = ["secret"]
