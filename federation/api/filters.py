"""django-filter FilterSets, one per list endpoint. A malformed filter value is refused with
400 `validation_failed`, never silently ignored."""

from __future__ import annotations

import django_filters as df
from django import forms
from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from accounting.models import LedgerEntry

from ..models import (
    Agreement,
    ApiToken,
    Dataset,
    GovernanceEvent,
    Membership,
    ModelVersion,
    Organisation,
    RoundParticipant,
    TrainingPlan,
    TrainingRound,
)
from .fields import MAX_PK

User = get_user_model()


@extend_schema_field(OpenApiTypes.INT)
class IdFilter(df.Filter):
    """An object id (a positive 64-bit integer)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_PK)
        super().__init__(*args, **kwargs)


class Since(df.IsoDateTimeFilter):
    def __init__(self, field_name: str, **kwargs):
        super().__init__(field_name=field_name, lookup_expr="gte", **kwargs)


class Before(df.IsoDateTimeFilter):
    def __init__(self, field_name: str, **kwargs):
        super().__init__(field_name=field_name, lookup_expr="lt", **kwargs)


class OrganisationFilter(df.FilterSet):
    slug = df.CharFilter()
    kind = df.ChoiceFilter(choices=Organisation.Kind.choices)

    class Meta:
        model = Organisation
        fields = ["slug", "kind"]


class MembershipFilter(df.FilterSet):
    organisation = IdFilter(field_name="organisation_id")
    role = df.ChoiceFilter(choices=Membership.Role.choices)
    user = df.CharFilter(field_name="user__username", help_text="Username.")

    class Meta:
        model = Membership
        fields = ["organisation", "role", "user"]


class AgreementFilter(df.FilterSet):
    status = df.ChoiceFilter(choices=Agreement.Status.choices)
    party = IdFilter(field_name="party_links__organisation_id", help_text="Organisation id of a party.")

    class Meta:
        model = Agreement
        fields = ["status", "party"]


class DatasetFilter(df.FilterSet):
    organisation = IdFilter(field_name="organisation_id")
    agreement = IdFilter(field_name="agreement_id")
    slug = df.CharFilter()
    accountant = df.ChoiceFilter(choices=Dataset.Accountant.choices)

    class Meta:
        model = Dataset
        fields = ["organisation", "agreement", "slug", "accountant"]


class PlanFilter(df.FilterSet):
    agreement = IdFilter(field_name="agreement_id")
    status = df.ChoiceFilter(choices=TrainingPlan.Status.choices)
    purpose = df.CharFilter()

    class Meta:
        model = TrainingPlan
        fields = ["agreement", "status", "purpose"]


class RoundFilter(df.FilterSet):
    plan = IdFilter(field_name="plan_id")
    status = df.ChoiceFilter(choices=TrainingRound.Status.choices)
    requested_after = Since("requested_at")
    requested_before = Before("requested_at")

    class Meta:
        model = TrainingRound
        fields = ["plan", "status", "requested_after", "requested_before"]


class ParticipantFilter(df.FilterSet):
    status = df.ChoiceFilter(choices=RoundParticipant.Status.choices)
    organisation = IdFilter(field_name="dataset__organisation_id")

    class Meta:
        model = RoundParticipant
        fields = ["status", "organisation"]


class LedgerEntryFilter(df.FilterSet):
    """Filters of a dataset's ledger. `kind` is grant, reserve, commit or release."""

    round = IdFilter(field_name="round_id")
    kind = df.ChoiceFilter(choices=LedgerEntry.Kind.choices)
    created_after = Since("created_at")
    created_before = Before("created_at")

    class Meta:
        model = LedgerEntry
        fields = ["round", "kind", "created_after", "created_before"]


class EventFilter(df.FilterSet):
    agreement = IdFilter(field_name="agreement_id")
    organisation = IdFilter(field_name="organisation_id")
    round = IdFilter(field_name="round_id")
    kind = df.ChoiceFilter(choices=GovernanceEvent.Kind.choices)
    created_after = Since("created_at")
    created_before = Before("created_at")

    class Meta:
        model = GovernanceEvent
        fields = ["agreement", "organisation", "round", "kind", "created_after", "created_before"]


class ModelVersionFilter(df.FilterSet):
    plan = IdFilter(field_name="plan_id")
    round = IdFilter(field_name="round_id")
    version = IdFilter(field_name="version", min_value=0)

    class Meta:
        model = ModelVersion
        fields = ["plan", "round", "version"]


class TokenFilter(df.FilterSet):
    user = df.CharFilter(field_name="user__username", help_text="Username (administrators see everyone's tokens).")
    revoked = df.BooleanFilter(field_name="revoked_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = ApiToken
        fields = ["user", "revoked"]
