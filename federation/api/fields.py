"""Serializer fields that resolve references in a request body against what the requester
can see: an object they may not know of reads as "does not exist", the same as a missing one."""

from __future__ import annotations

from rest_framework import serializers

# Primary keys are 64-bit signed integers in every supported database; a larger number is
# simply no object (SQLite would otherwise raise OverflowError on the lookup).
MAX_PK = 2**63 - 1


def valid_pk(value) -> int | None:
    """`value` as a primary key, or None when it cannot be one."""
    try:
        pk = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if isinstance(value, bool) or not (1 <= pk <= MAX_PK):
        return None
    return pk


class VisibleRelatedField(serializers.PrimaryKeyRelatedField):
    """`VisibleRelatedField(visible=visible_agreements)`: a primary key looked up in
    `visible(request.user)`."""

    def __init__(self, *, visible, **kwargs):
        self.visible = visible
        kwargs.setdefault("pk_field", serializers.IntegerField())
        super().__init__(**kwargs)

    def get_queryset(self):
        request = self.context.get("request")
        return self.visible(request.user if request else None)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("incorrect_type", data_type=type(data).__name__)
        pk = valid_pk(data)
        if pk is None:
            self.fail("does_not_exist", pk_value=data)
        obj = self.get_queryset().filter(pk=pk).first()
        if obj is None:
            self.fail("does_not_exist", pk_value=data)
        return obj
