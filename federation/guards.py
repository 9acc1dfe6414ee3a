"""Model-level guards: governance rows that change only through the services.

ARCHITECTURE.md, Trust 4: the Django admin reads, and below the services the models refuse
what no service does (signed terms edited in place, a plan's DP parameters changed after its
first round, a budgeted dataset's delta changed, a round moved backwards). The same rules are
database triggers (federation/triggers.py), for anyone who goes around the models.

A guarded model names the fields it watches; `guard_change(pk, old, new)` sees the row as the
database holds it and as it would be written, and raises a domain error naming the fields.
`save()` reads the stored row first (one query, skipped when `update_fields` touches no watched
field); `QuerySet.update()` checks every row it would write.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from fedgov.errors import InvalidState, ValidationFailed


class RecordFrozen(InvalidState):
    """A field that no longer changes: signed terms, a plan with rounds, a budgeted dataset."""

    code = "record_frozen"


class IllegalTransition(InvalidState):
    """A round's status or phase moved in a way the state machine does not allow."""

    code = "illegal_transition"


class ApproverNotInvolved(ValidationFailed):
    """A round approval for an organisation that has no dataset in the round."""

    code = "approver_not_involved"


class _Unknown:
    """The new value of a field set by an expression (F(), Case...): unequal to anything."""

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "<expression>"


UNKNOWN = _Unknown()


class GuardedQuerySet(models.QuerySet):
    def update(self, **kwargs):
        self.model.guard_update(self, kwargs)
        return super().update(**kwargs)

    def bulk_update(self, objs, fields, batch_size=None):
        objs = list(objs)
        for obj in objs:
            obj.guard_save(update_fields=fields)
        return super().bulk_update(objs, fields, batch_size=batch_size)


class GuardedModel(models.Model):
    """Rows whose GUARDED_FIELDS change only when `guard_change` allows it. CONTEXT_FIELDS
    are read too, because the rule depends on them (an agreement's status, say)."""

    GUARDED_FIELDS: tuple[str, ...] = ()
    CONTEXT_FIELDS: tuple[str, ...] = ()

    objects = GuardedQuerySet.as_manager()

    class Meta:
        abstract = True

    @classmethod
    def guard_change(cls, pk, old: dict, new: dict) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @classmethod
    def _watched(cls) -> dict[str, models.Field]:
        return {name: cls._meta.get_field(name) for name in (*cls.GUARDED_FIELDS, *cls.CONTEXT_FIELDS)}

    @classmethod
    def _field_name(cls, name: str) -> str:
        """`plan` and `plan_id` both name the plan field."""
        for field in cls._meta.concrete_fields:
            if name in (field.name, field.attname):
                return field.name
        return name

    @staticmethod
    def _python(field: models.Field, value):
        if value is None or isinstance(field, (models.ForeignKey, models.JSONField)):
            return value
        try:
            return field.to_python(value)
        except ValidationError:
            return value

    def guard_save(self, *, update_fields=None) -> None:
        if self._state.adding or self.pk is None:
            return
        watched = self._watched()
        names = set(watched) if update_fields is None else {self._field_name(n) for n in update_fields} & set(watched)
        if not names:
            return
        old = type(self)._base_manager.filter(pk=self.pk).values(*(f.attname for f in watched.values())).first()
        if old is None:
            return  # an insert with a chosen primary key
        old = {name: old[field.attname] for name, field in watched.items()}
        new = dict(old)
        for name in names:
            field = watched[name]
            new[name] = self._python(field, getattr(self, field.attname))
        type(self).guard_change(self.pk, old, new)

    @classmethod
    def guard_update(cls, queryset: models.QuerySet, changes: dict) -> None:
        watched = cls._watched()
        values = {}
        for key, value in changes.items():
            name = cls._field_name(key)
            if name in watched:
                values[name] = UNKNOWN if hasattr(value, "resolve_expression") else cls._python(watched[name], value)
        if not values:
            return
        attnames = {name: field.attname for name, field in watched.items()}
        for row in queryset.order_by().values("pk", *attnames.values()):
            old = {name: row[attname] for name, attname in attnames.items()}
            cls.guard_change(row["pk"], old, {**old, **values})

    def save(self, *args, **kwargs):
        self.guard_save(update_fields=kwargs.get("update_fields"))
        super().save(*args, **kwargs)


def changed_fields(old: dict, new: dict, names) -> list[str]:
    return [name for name in names if old[name] != new[name]]
