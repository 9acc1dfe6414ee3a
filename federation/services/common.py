"""Helpers every service shares: validation that reports per field, and the event record."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models, transaction

from fedgov.errors import ValidationFailed
from notifications.rules import notify_for_event

from ..models import GovernanceEvent


def validated(instance: models.Model, *, exclude: list[str] | None = None) -> models.Model:
    """full_clean() the instance and turn Django's errors into a ValidationFailed whose
    details name each field, so the API and the forms can show them next to the field."""
    try:
        instance.full_clean(exclude=exclude)
    except DjangoValidationError as exc:
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        summary = "; ".join(f"{k}: {' '.join(v)}" if k != "__all__" else " ".join(v) for k, v in fields.items())
        raise ValidationFailed(f"Invalid {instance._meta.verbose_name}: {summary}", fields=fields) from exc
    return instance


def field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, fields={field: [message]})


@transaction.atomic
def event_record(
    *,
    kind: str,
    message: str,
    actor=None,
    agreement=None,
    organisation=None,
    round=None,
    details: dict[str, Any] | None = None,
) -> GovernanceEvent:
    event = GovernanceEvent.objects.create(
        kind=kind,
        message=message,
        actor=actor if actor is not None and getattr(actor, "pk", None) else None,
        actor_name=getattr(actor, "username", "") or ("system" if actor is None else ""),
        agreement=agreement,
        organisation=organisation,
        round=round,
        details=details or {},
    )
    # Who is told, by which channel: written in this same transaction (an outbox), delivered after commit.
    notify_for_event(event)
    return event
