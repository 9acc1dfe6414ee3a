"""Django admin: it reads (ARCHITECTURE.md, Trust 4).

Every governance record (organisations and memberships, agreements, parties, signatures,
datasets, plans, rounds, approvals, protocol state, model versions, agent identities, tokens,
events) is view, search and filter only: no add, change or delete, so the admin is no back
door around the services and the governance events they record. The one write is an action
that calls a service: revoking API tokens (services.tokens.token_revoke).
The ledger's models are in accounting/admin.py, read-only too.
"""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from fedgov.errors import ApplicationError

from . import models
from .services.tokens import token_revoke


class ReadOnlyAdminMixin:
    """View, search and filter; no add, change or delete, in the admin and its inlines."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


class ReadOnlyAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    pass


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline):
    extra = 0
    can_delete = False


@admin.register(models.Organisation)
class OrganisationAdmin(ReadOnlyAdmin):
    list_display = ("name", "slug", "kind", "created_at")
    list_filter = ("kind",)
    search_fields = ("name", "slug")


@admin.register(models.Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ("user", "organisation", "role", "created_at")
    list_filter = ("role", "organisation")
    search_fields = ("user__username", "organisation__name")


class AgreementPartyInline(ReadOnlyInline):
    model = models.AgreementParty


class AgreementSignatureInline(ReadOnlyInline):
    model = models.AgreementSignature


@admin.register(models.Agreement)
class AgreementAdmin(ReadOnlyAdmin):
    list_display = ("title", "status", "version", "valid_from", "valid_until")
    list_filter = ("status",)
    search_fields = ("title", "terms_hash")
    inlines = [AgreementPartyInline, AgreementSignatureInline]


@admin.register(models.AgreementParty)
class AgreementPartyAdmin(ReadOnlyAdmin):
    list_display = ("organisation", "agreement", "status", "exit_effective_at")
    list_filter = ("status",)
    search_fields = ("organisation__name", "agreement__title")


@admin.register(models.AgreementSignature)
class AgreementSignatureAdmin(ReadOnlyAdmin):
    list_display = ("agreement", "organisation", "version", "signed_by", "signed_at")
    search_fields = ("agreement__title", "organisation__name", "terms_hash")


@admin.register(models.Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ("slug", "organisation", "agreement", "record_count", "epsilon_budget", "delta", "accountant")
    list_filter = ("organisation", "accountant")
    search_fields = ("slug", "name")


@admin.register(models.TrainingPlan)
class TrainingPlanAdmin(ReadOnlyAdmin):
    list_display = ("name", "agreement", "purpose", "status", "rounds_total", "noise_multiplier", "clip_norm")
    list_filter = ("status",)
    search_fields = ("name", "purpose")


class RoundParticipantInline(ReadOnlyInline):
    model = models.RoundParticipant


class RoundApprovalInline(ReadOnlyInline):
    model = models.RoundApproval


@admin.register(models.TrainingRound)
class TrainingRoundAdmin(ReadOnlyAdmin):
    list_display = ("plan", "number", "status", "phase", "requested_at", "finished_at")
    list_filter = ("status", "phase")
    search_fields = ("plan__name", "reason")
    inlines = [RoundParticipantInline, RoundApprovalInline]


@admin.register(models.RoundParticipant)
class RoundParticipantAdmin(ReadOnlyAdmin):
    list_display = ("round", "dataset", "status", "last_phase")
    list_filter = ("status",)


@admin.register(models.RoundApproval)
class RoundApprovalAdmin(ReadOnlyAdmin):
    list_display = ("round", "organisation", "decision", "decided_by", "decided_at")
    list_filter = ("decision",)
    search_fields = ("organisation__name", "reason")


@admin.register(models.StandingApproval)
class StandingApprovalAdmin(ReadOnlyAdmin):
    list_display = ("plan", "organisation", "max_rounds", "max_epsilon", "given_by", "revoked_at")
    search_fields = ("plan__name", "organisation__name")


@admin.register(models.RoundProtocol)
class RoundProtocolAdmin(ReadOnlyAdmin):
    list_display = ("round", "updated_at")
    exclude = ("running_sum",)


@admin.register(models.ProtocolMessage)
class ProtocolMessageAdmin(ReadOnlyAdmin):
    list_display = ("round", "phase", "party", "created_at")
    list_filter = ("phase",)


@admin.register(models.ProtocolRelay)
class ProtocolRelayAdmin(ReadOnlyAdmin):
    list_display = ("round", "phase", "party")
    list_filter = ("phase",)


@admin.register(models.ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ("plan", "version", "round", "sha256", "created_at")
    search_fields = ("sha256",)
    exclude = ("params",)


@admin.register(models.AgentIdentity)
class AgentIdentityAdmin(ReadOnlyAdmin):
    list_display = ("organisation", "user", "public_key", "enrolled_at", "revoked_at")
    search_fields = ("organisation__name", "public_key")


@admin.register(models.AgentStatus)
class AgentStatusAdmin(ReadOnlyAdmin):
    list_display = ("organisation", "enrolled_at", "last_seen_at", "software_version", "terms_updated_at")
    search_fields = ("organisation__name",)


@admin.register(models.GovernanceEvent)
class GovernanceEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "actor_name", "agreement", "message")
    list_filter = ("kind",)
    search_fields = ("message", "actor_name")


@admin.register(models.ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "user", "name", "scopes", "created_at", "expires_at", "revoked_at")
    search_fields = ("prefix", "user__username", "name")
    exclude = ("key_hash",)
    actions = ["revoke_tokens"]

    @admin.action(description="Revoke the selected tokens")
    def revoke_tokens(self, request, queryset):
        revoked = 0
        for token in queryset:
            try:
                token_revoke(actor=request.user, token=token)
                revoked += 1
            except ApplicationError as exc:
                self.message_user(request, str(exc), messages.ERROR)
        self.message_user(request, f"{revoked} token(s) revoked.")


@admin.register(models.RoundTicket)
class RoundTicketAdmin(ReadOnlyAdmin):
    list_display = ("participant", "ticket_hash", "key_id", "created_at", "receipt_at")
    search_fields = ("ticket_hash",)


@admin.register(models.UserPreference)
class UserPreferenceAdmin(ReadOnlyAdmin):
    """A person's UI language, set by themselves with the language switcher (federation.i18n)."""

    list_display = ("user", "language", "updated_at")
    list_filter = ("language",)
    search_fields = ("user__username",)


class GovernedUserAdmin(UserAdmin):
    """Django's user admin, except that deleting a user who audits a signed agreement (one of
    its signed auditors: federation/member_guards.py) is shown as protected on the delete
    page, single or bulk, rather than failing: deactivate such an account instead."""

    def get_deleted_objects(self, objs, request):
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        for user in objs:
            for agreement in user.audited_agreements.order_by("pk"):
                if models.Agreement.members_frozen(agreement.pk) is not None:
                    protected.append(
                        f"{user.get_username()} audits the signed agreement '{agreement}': deactivate the account instead "
                        "(an amendment removes an auditor)"
                    )
        return to_delete, model_count, perms_needed, protected


if admin.site.is_registered(get_user_model()):
    admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), GovernedUserAdmin)
