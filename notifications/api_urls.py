"""Notification routes, included under /api/v1/ by federation/api/urls.py."""

from django.urls import path

from . import api

urlpatterns = [
    path("notifications/", api.NotificationListView.as_view(), name="notifications"),
    path("notifications/read-all/", api.NotificationReadAllView.as_view(), name="notifications-read-all"),
    path("notifications/<int:pk>/read/", api.NotificationReadView.as_view(), name="notification-read"),
    path("notification-preferences/", api.PreferencesView.as_view(), name="notification-preferences"),
    path("organisations/<int:pk>/webhooks/", api.OrganisationWebhooksView.as_view(), name="organisation-webhooks"),
    path("webhooks/<int:pk>/", api.WebhookDetailView.as_view(), name="webhook"),
    path("webhooks/<int:pk>/deliveries/", api.WebhookDeliveriesView.as_view(), name="webhook-deliveries"),
]
