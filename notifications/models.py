"""Notifications: the in-app inbox, and the outbox of emails and webhook calls.

Every row here is written in the transaction of the governance event that causes it
(`rules.notify_for_event`, called by `federation.services.common.event_record`): if the
event rolls back, so do its notifications, and once it commits nothing is lost, because a
delivery is a row (the outbox) that a Celery task claims, sends and marks, and that a beat
sweep hands out again if its task was lost (a worker SIGKILLed, Redis restarted).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Kind(models.TextChoices):
    """What a person can be told. `rules.RULES` maps governance events onto these."""

    SIGNATURE_REQUESTED = "signature_requested", _("Signature requested")
    APPROVAL_WAITING = "approval_waiting", _("Approval waiting")
    ROUND_BLOCKED = "round_blocked", _("Round blocked")
    ROUND_ABORTED = "round_aborted", _("Round aborted")
    ROUND_FAILED = "round_failed", _("Round failed")
    ROUND_COMPLETED = "round_completed", _("Round completed")
    PLAN_PAUSED = "plan_paused", _("Plan paused or stopped")
    # xgettext:no-python-format
    BUDGET_80 = "budget_80", _("Budget 80% spent")
    BUDGET_EXHAUSTED = "budget_exhausted", _("Budget exhausted")
    EXIT_NOTICE = "exit_notice", _("Exit notice given")
    EXIT_EFFECTIVE = "exit_effective", _("Exit effective")
    LEDGER_VERIFICATION_FAILED = "ledger_verification_failed", _("Ledger verification failing")


class Notification(models.Model):
    """One line of a person's inbox."""

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    link = models.CharField(max_length=500, blank=True, help_text="Path of the page this is about.")
    event = models.ForeignKey(
        "federation.GovernanceEvent", null=True, blank=True, on_delete=models.PROTECT, related_name="notifications"
    )
    # What this is about, so that one fact is told once per person even when several events
    # (or several sweeps) see it: "event:<id>", "budget_80:dataset:<id>:<budget>", ...
    subject_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["recipient", "kind", "subject_key"], name="notification_once_per_subject"),
        ]
        indexes = [models.Index(fields=["recipient", "read_at"], name="notification_unread")]

    def __str__(self) -> str:
        return f"{self.recipient}: {self.title}"

    @property
    def is_read(self) -> bool:
        return self.read_at is not None


class NotificationPreference(models.Model):
    """A person's choice for one kind; no row means both channels on."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preferences")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    in_app = models.BooleanField(default=True)
    email = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "kind"], name="notification_preference_once_per_kind")]


class Webhook(models.Model):
    """An organisation's endpoint: every notification about the organisation is POSTed to it,
    signed with `secret` (HMAC-SHA256; see notifications/signing.py)."""

    organisation = models.ForeignKey("federation.Organisation", on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=128)
    kinds = models.JSONField(default=list, blank=True, help_text="Kinds to send; empty: every kind.")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organisation_id", "-created_at"]

    def __str__(self) -> str:
        return f"{self.organisation}: {self.url}"

    def wants(self, kind: str) -> bool:
        return self.active and (not self.kinds or kind in self.kinds)


class Delivery(models.Model):
    """One email or one webhook call to make: the outbox row.

    pending -> sending (claimed by one task, with a lease) -> delivered | pending (retry,
    after a backoff) | failed (out of attempts); cancelled when what it announced no longer
    waits (an approval given before the email went). A `sending` row whose lease ran out
    belonged to a worker that died: the sweep hands it out again (see delivery.delivery_claim).
    """

    class Channel(models.TextChoices):
        EMAIL = "email", _("Email")
        WEBHOOK = "webhook", _("Webhook")

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        SENDING = "sending", _("Sending")
        DELIVERED = "delivered", _("Delivered")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    channel = models.CharField(max_length=8, choices=Channel.choices)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    subject_key = models.CharField(max_length=200)
    notification = models.ForeignKey(Notification, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    webhook = models.ForeignKey(Webhook, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey("federation.GovernanceEvent", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    target = models.CharField(max_length=500, help_text="The email address or the URL.")
    payload = models.JSONField(help_text="Email: subject and body. Webhook: the JSON body.")
    # Stable across retries: the email's Message-ID and the webhook's X-Fedgov-Delivery, by
    # which a receiver recognises a repeat.
    idempotency_key = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.CharField(max_length=32, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(channel="email", recipient__isnull=False) | Q(channel="webhook", webhook__isnull=False)),
                name="delivery_has_its_target",
            ),
            models.CheckConstraint(
                condition=~Q(status="sending") | Q(lease_expires_at__isnull=False), name="delivery_sending_has_lease"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due")]

    def __str__(self) -> str:
        return f"{self.channel} to {self.target} ({self.status})"


class DeliveryAttempt(models.Model):
    """The delivery log: one row per try, with what came back."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    status_code = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status (webhooks) or SMTP reply code.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery_id", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="delivery_attempt_once")]
