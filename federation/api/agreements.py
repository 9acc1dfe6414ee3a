"""Agreements: drafted and amended by administrators, signed by each party's representative,
left by exit notice. Reads show the terms, the parties' standing and the signatures of the
current version."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status

from ..access import acting_organisation, require_administrator, visible_organisations
from ..models import AUDITORS_GROUP, TERM_FIELDS, Agreement, AgreementParty, AgreementSignature
from ..selectors.agreements import agreements_for
from ..services.agreements import (
    agreement_amend,
    agreement_create,
    agreement_sign,
    agreement_submit,
    party_give_exit_notice,
)
from .base import ApiView, Input
from .fields import VisibleRelatedField
from .filters import AgreementFilter

User = get_user_model()


class PartyOutput(serializers.ModelSerializer):
    organisation_slug = serializers.CharField(source="organisation.slug")
    organisation_name = serializers.CharField(source="organisation.name")

    class Meta:
        model = AgreementParty
        fields = ["organisation", "organisation_slug", "organisation_name", "status", "notice_given_at", "exit_effective_at"]
        ref_name = "AgreementParty"


class SignatureOutput(serializers.ModelSerializer):
    organisation_slug = serializers.CharField(source="organisation.slug")
    signed_by = serializers.CharField(source="signed_by.username")

    class Meta:
        model = AgreementSignature
        fields = ["organisation", "organisation_slug", "version", "terms_hash", "signed_by", "signed_at"]
        ref_name = "AgreementSignature"


class AgreementOutput(serializers.ModelSerializer):
    parties = PartyOutput(source="party_links", many=True)
    signatures = serializers.SerializerMethodField(help_text="Signatures of the current version.")
    auditors = serializers.SlugRelatedField(slug_field="username", many=True, read_only=True)
    purposes = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = Agreement
        fields = [
            "id",
            "status",
            "version",
            "terms_hash",
            *TERM_FIELDS,
            "parties",
            "signatures",
            "auditors",
            "created_at",
            "activated_at",
        ]
        ref_name = "Agreement"

    @extend_schema_field(SignatureOutput(many=True))
    def get_signatures(self, agreement: Agreement) -> list:
        # Filtered in Python from the prefetched rows: one query for the whole page.
        current = [s for s in agreement.signatures.all() if s.version == agreement.version]
        return SignatureOutput(current, many=True).data


class TermsInput(Input):
    """The terms of an agreement (see the Agreement schema for their meaning)."""

    title = serializers.CharField(max_length=200)
    purposes = serializers.ListField(child=serializers.CharField(max_length=200), min_length=1)
    valid_from = serializers.DateField()
    valid_until = serializers.DateField()
    min_participants = serializers.IntegerField(min_value=1, max_value=10_000, default=2)
    min_noise_multiplier = serializers.FloatField(min_value=0)
    max_clip_norm = serializers.FloatField(min_value=0)
    max_delta = serializers.FloatField(min_value=0, max_value=1)
    max_epsilon_per_round = serializers.FloatField(min_value=0)
    max_epsilon_budget = serializers.FloatField(min_value=0)
    approval_rule = serializers.ChoiceField(choices=Agreement.ApprovalRule.choices, default=Agreement.ApprovalRule.EVERY_PARTY)
    approval_quorum = serializers.IntegerField(min_value=1, max_value=10_000, required=False, allow_null=True)
    auditor_access = serializers.ChoiceField(
        choices=Agreement.AuditorAccess.choices, default=Agreement.AuditorAccess.LEDGER_AND_GOVERNANCE
    )
    exit_notice_days = serializers.IntegerField(min_value=0, max_value=3650, default=30)
    data_retention = serializers.CharField(allow_blank=True, default="", max_length=10_000)
    parties = VisibleRelatedField(visible=visible_organisations, many=True, help_text="Organisation ids; at least two.")
    auditors = serializers.SlugRelatedField(
        slug_field="username",
        many=True,
        required=False,
        queryset=User.objects.filter(groups__name=AUDITORS_GROUP),
        help_text="Usernames of auditors.",
    )

    class Meta:
        ref_name = "AgreementInput"


class AmendInput(TermsInput):
    """Any subset of the terms; what is left out stays as it is."""

    class Meta:
        ref_name = "AgreementAmendInput"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False
            # A default would change a term the client did not mention.
            field.default = serializers.empty


class AgreementListView(ApiView):
    """Agreements you are a party to or audit (administrators: all)."""

    required_scope = {"GET": "read", "POST": "approve"}
    InputSerializer = TermsInput
    filterset_class = AgreementFilter
    ordering_fields = ["created_at", "title", "valid_until", "status"]

    def get_queryset(self):
        return agreements_for(user=self.request.user)

    @extend_schema(operation_id="agreements_list", responses=AgreementOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), AgreementOutput)

    @extend_schema(operation_id="agreements_create", request=TermsInput, responses={201: AgreementOutput})
    def post(self, request):
        require_administrator(request.user, what="agreement", action="create")
        data = dict(self.validated_input(TermsInput))
        agreement = agreement_create(actor=request.user, parties=data.pop("parties"), auditors=data.pop("auditors", []), **data)
        return self.output(
            AgreementOutput, agreements_for(user=request.user).get(pk=agreement.pk), status_code=status.HTTP_201_CREATED
        )


class AgreementObjectView(ApiView):
    object_name = "Agreement"

    def object_queryset(self):
        return agreements_for(user=self.request.user)

    def respond(self, agreement: Agreement):
        return self.output(AgreementOutput, self.object_queryset().get(pk=agreement.pk))

    def acting_party(self, agreement: Agreement, data: dict, *, action: str):
        """The party organisation the request acts for (see access.acting_organisation)."""
        return acting_organisation(
            self.request.user,
            candidates=[p.organisation for p in agreement.party_links.all()],
            given=data.get("organisation"),
            agreement=agreement,
            action=action,
        )


class AgreementDetailView(AgreementObjectView):
    @extend_schema(operation_id="agreements_retrieve", responses=AgreementOutput)
    def get(self, request, pk: int):
        return self.output(AgreementOutput, self.get_object())


class AgreementSubmitView(AgreementObjectView):
    """Freeze a draft's terms and open them for signature (administrators)."""

    required_scope = "approve"

    @extend_schema(operation_id="agreements_submit", request=None, responses=AgreementOutput)
    def post(self, request, pk: int):
        agreement = agreement_submit(actor=request.user, agreement=self.get_object())
        return self.respond(agreement)


class OrganisationChoice(Input):
    organisation = VisibleRelatedField(
        visible=visible_organisations,
        required=False,
        allow_null=True,
        help_text="The organisation you act for; may be left out when you represent exactly one that is concerned.",
    )


class AgreementSignView(AgreementObjectView):
    """Sign the current terms for your organisation. `terms_hash` must equal the agreement's
    current `terms_hash`: nobody signs terms that changed since they read them. The last
    party's signature activates the agreement."""

    required_scope = "approve"

    class InputSerializer(OrganisationChoice):
        terms_hash = serializers.CharField(max_length=64)

        class Meta:
            ref_name = "AgreementSignInput"

    @extend_schema(operation_id="agreements_sign", request=InputSerializer, responses=AgreementOutput)
    def post(self, request, pk: int):
        agreement = self.get_object()
        data = self.validated_input(self.InputSerializer)
        organisation = self.acting_party(agreement, data, action="sign this agreement")
        agreement_sign(actor=request.user, agreement=agreement, organisation=organisation, terms_hash=data["terms_hash"])
        return self.respond(agreement)


class AgreementAmendView(AgreementObjectView):
    """Change the terms (administrators): a new version every party signs again."""

    required_scope = "approve"
    InputSerializer = AmendInput

    @extend_schema(operation_id="agreements_amend", request=AmendInput, responses=AgreementOutput)
    def post(self, request, pk: int):
        agreement = self.get_object()
        require_administrator(request.user, what="agreement", action="amend")
        data = dict(self.validated_input(AmendInput))
        agreement = agreement_amend(
            actor=request.user,
            agreement=agreement,
            parties=data.pop("parties", None),
            auditors=data.pop("auditors", None),
            **data,
        )
        return self.respond(agreement)


class AgreementExitNoticeView(AgreementObjectView):
    """Give your organisation's exit notice: it takes part in no new round from now on, and
    has exited once the agreement's notice period has run."""

    required_scope = "approve"

    class InputSerializer(OrganisationChoice):
        class Meta:
            ref_name = "ExitNoticeInput"

    @extend_schema(operation_id="agreements_exit_notice", request=InputSerializer, responses=PartyOutput)
    def post(self, request, pk: int):
        agreement = self.get_object()
        data = self.validated_input(self.InputSerializer)
        organisation = self.acting_party(agreement, data, action="give exit notice")
        party = party_give_exit_notice(actor=request.user, agreement=agreement, organisation=organisation)
        return self.output(PartyOutput, party)
