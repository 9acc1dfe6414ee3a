"""django-filter FilterSets, one per list endpoint. A malformed filter value is refused with
400 `validation_failed`, never silently ignored."""

from __future__ import annotations

import django_filters as df
from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from accounting.models import LedgerEntry

from ..models import (
    AgentIdentity,
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


class StrictFilterSet(df.FilterSet):
    """A filter sent with an empty value is refused like any other malformed value (only text
    filters accept the empty string); a client never gets an unfiltered list by mistake."""

    def is_valid(self) -> bool:
        super().is_valid()
        for name, f in self.filters.items():
            if name in self.data and self.data.get(name) == "" and not isinstance(f, df.CharFilter):
                self.form.add_error(name, "Give a value, or leave this filter out.")
        return not self.form.errors


class StrictBooleanField(forms.Field):
    def to_python(self, value):
        if value in (None, ""):
            return None
        if value in ("true", "false"):
            return value == "true"
        raise forms.ValidationError("Enter true or false.")


@extend_schema_field(OpenApiTypes.BOOL)
class BooleanFilter(df.BooleanFilter):
    """`true` or `false`, nothing else."""

    field_class = StrictBooleanField


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


class OrganisationFilter(StrictFilterSet):
    slug = df.CharFilter()
    kind = df.ChoiceFilter(choices=Organisation.Kind.choices)

    class Meta:
        model = Organisation
        fields = ["slug", "kind"]


class AgentFilter(StrictFilterSet):
    """Organisations' partner agents (/api/v1/agents/)."""

    organisation = IdFilter(field_name="id", help_text="Organisation id.")
    slug = df.CharFilter(help_text="Organisation slug.")
    online = BooleanFilter(method="filter_online", help_text="Polled within FEDGOV_AGENT_ONLINE_SECONDS.")
    enrolled = BooleanFilter(method="filter_enrolled", help_text="Holds a live enrolled identity key.")

    class Meta:
        model = Organisation
        fields = ["organisation", "slug", "online", "enrolled"]

    def filter_online(self, queryset, name, value):
        from django.utils import timezone

        from ..services.agents import online_window

        recent = Q(agent_status__last_seen_at__gte=timezone.now() - online_window())
        return queryset.filter(recent) if value else queryset.exclude(recent)

    def filter_enrolled(self, queryset, name, value):
        live = Q(id__in=AgentIdentity.objects.filter(revoked_at__isnull=True).values("organisation_id"))
        return queryset.filter(live) if value else queryset.exclude(live)


class MembershipFilter(StrictFilterSet):
    organisation = IdFilter(field_name="organisation_id")
    role = df.ChoiceFilter(choices=Membership.Role.choices)
    user = df.CharFilter(field_name="user__username", help_text="Username.")

    class Meta:
        model = Membership
        fields = ["organisation", "role", "user"]


class AgreementFilter(StrictFilterSet):
    status = df.ChoiceFilter(choices=Agreement.Status.choices)
    party = IdFilter(field_name="party_links__organisation_id", help_text="Organisation id of a party.")

    class Meta:
        model = Agreement
        fields = ["status", "party"]


class DatasetFilter(StrictFilterSet):
    organisation = IdFilter(field_name="organisation_id")
    agreement = IdFilter(field_name="agreement_id")
    slug = df.CharFilter()
    accountant = df.ChoiceFilter(choices=Dataset.Accountant.choices)

    class Meta:
        model = Dataset
        fields = ["organisation", "agreement", "slug", "accountant"]


class PlanFilter(StrictFilterSet):
    agreement = IdFilter(field_name="agreement_id")
    status = df.ChoiceFilter(choices=TrainingPlan.Status.choices)
    purpose = df.CharFilter()

    class Meta:
        model = TrainingPlan
        fields = ["agreement", "status", "purpose"]


class RoundFilter(StrictFilterSet):
    plan = IdFilter(field_name="plan_id")
    status = df.ChoiceFilter(choices=TrainingRound.Status.choices)
    requested_after = Since("requested_at")
    requested_before = Before("requested_at")

    class Meta:
        model = TrainingRound
        fields = ["plan", "status", "requested_after", "requested_before"]


class ParticipantFilter(StrictFilterSet):
    status = df.ChoiceFilter(choices=RoundParticipant.Status.choices)
    organisation = IdFilter(field_name="dataset__organisation_id")

    class Meta:
        model = RoundParticipant
        fields = ["status", "organisation"]


class LedgerEntryFilter(StrictFilterSet):
    """Filters of a dataset's ledger. `kind` is GRANT, RESERVE, COMMIT or RELEASE."""

    round = IdFilter(field_name="round_id")
    kind = df.ChoiceFilter(choices=LedgerEntry.Kind.choices)
    created_after = Since("created_at")
    created_before = Before("created_at")

    class Meta:
        model = LedgerEntry
        fields = ["round", "kind", "created_after", "created_before"]


class EventFilter(StrictFilterSet):
    agreement = IdFilter(field_name="agreement_id")
    organisation = IdFilter(field_name="organisation_id")
    round = IdFilter(field_name="round_id")
    kind = df.ChoiceFilter(choices=GovernanceEvent.Kind.choices)
    created_after = Since("created_at")
    created_before = Before("created_at")

    class Meta:
        model = GovernanceEvent
        fields = ["agreement", "organisation", "round", "kind", "created_after", "created_before"]


class ModelVersionFilter(StrictFilterSet):
    plan = IdFilter(field_name="plan_id")
    round = IdFilter(field_name="round_id")
    version = IdFilter(field_name="version", min_value=0)

    class Meta:
        model = ModelVersion
        fields = ["plan", "round", "version"]


class TokenFilter(StrictFilterSet):
    user = df.CharFilter(field_name="user__username", help_text="Username (administrators see everyone's tokens).")
    revoked = BooleanFilter(field_name="revoked_at", lookup_expr="isnull", exclude=True)

    class Meta:
        model = ApiToken
        fields = ["user", "revoked"]
