"""Django admin for every model. Governance events are read-only: history is not edited."""

from django.contrib import admin

from . import models


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(models.Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "kind", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organisation", "role", "created_at")
    list_filter = ("role", "organisation")
    search_fields = ("user__username", "organisation__name")


class AgreementPartyInline(admin.TabularInline):
    model = models.AgreementParty
    extra = 0


class AgreementSignatureInline(admin.TabularInline):
    model = models.AgreementSignature
    extra = 0
    readonly_fields = ("organisation", "version", "terms_hash", "signed_by", "signed_at")
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(models.Agreement)
class AgreementAdmin(admin.ModelAdmin):
    list_display = ("title", "status", "version", "valid_from", "valid_until")
    list_filter = ("status",)
    search_fields = ("title",)
    readonly_fields = ("terms_hash", "version", "activated_at", "created_at")
    filter_horizontal = ("auditors",)
    inlines = [AgreementPartyInline, AgreementSignatureInline]


@admin.register(models.AgreementParty)
class AgreementPartyAdmin(admin.ModelAdmin):
    list_display = ("organisation", "agreement", "status", "exit_effective_at")
    list_filter = ("status",)


@admin.register(models.AgreementSignature)
class AgreementSignatureAdmin(ReadOnlyAdmin):
    list_display = ("agreement", "organisation", "version", "signed_by", "signed_at")


@admin.register(models.Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("slug", "organisation", "agreement", "record_count", "epsilon_budget", "delta", "accountant")
    list_filter = ("organisation", "accountant")
    search_fields = ("slug", "name")


@admin.register(models.TrainingPlan)
class TrainingPlanAdmin(admin.ModelAdmin):
    list_display = ("name", "agreement", "purpose", "status", "rounds_total", "noise_multiplier", "clip_norm")
    list_filter = ("status",)
    filter_horizontal = ("datasets",)


class RoundParticipantInline(admin.TabularInline):
    model = models.RoundParticipant
    extra = 0


class RoundApprovalInline(admin.TabularInline):
    model = models.RoundApproval
    extra = 0


@admin.register(models.TrainingRound)
class TrainingRoundAdmin(admin.ModelAdmin):
    list_display = ("plan", "number", "status", "phase", "requested_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("governance_report", "metrics")
    inlines = [RoundParticipantInline, RoundApprovalInline]


@admin.register(models.RoundApproval)
class RoundApprovalAdmin(admin.ModelAdmin):
    list_display = ("round", "organisation", "decision", "decided_by", "decided_at")


@admin.register(models.StandingApproval)
class StandingApprovalAdmin(admin.ModelAdmin):
    list_display = ("plan", "organisation", "max_rounds", "max_epsilon", "given_by", "revoked_at")


@admin.register(models.GovernanceEvent)
class GovernanceEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "actor_name", "agreement", "message")
    list_filter = ("kind",)
    search_fields = ("message", "actor_name")


@admin.register(models.ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "scopes", "created_at", "expires_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
