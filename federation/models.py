"""The governance domain: who agreed to what, which data takes part, and every round.

The coordinator keeps metadata only: a `Dataset` row describes a partner's data (record
count, schema, budget); the records stay at the partner. Invariants that must never be
broken are also database constraints (ARCHITECTURE.md, Conventions 3), so a bug in a service cannot slip an
impossible row past.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .guards import ApproverNotInvolved, GuardedModel, IllegalTransition, RecordFrozen, changed_fields

ADMINISTRATORS_GROUP = "administrators"
AUDITORS_GROUP = "auditors"


class Organisation(models.Model):
    class Kind(models.TextChoices):
        HOSPITAL = "hospital", _("Hospital")
        BANK = "bank", _("Bank")
        AGENCY = "agency", _("Humanitarian agency")
        RESEARCH = "research", _("Research institute")
        OTHER = "other", _("Other")

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.OTHER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role at one organisation. Auditors and administrators are site-wide groups."""

    class Role(models.TextChoices):
        REPRESENTATIVE = "representative", _("Partner representative")
        AGENT = "agent", _("Partner agent")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organisation", "role"], name="membership_unique_role"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}) at {self.organisation}"

    @property
    def can_approve(self) -> bool:
        return self.role == self.Role.REPRESENTATIVE

    @property
    def can_sign(self) -> bool:
        return self.role == self.Role.REPRESENTATIVE


MSG_TERMS_SIGNED = (
    "Agreement {pk} is {status}: its signed terms ({fields}) change only by an amendment, "
    "which needs every party's signature again."
)
MSG_MEMBERS_SIGNED = (
    "Agreement {pk} is {status}: its {what} are part of the signed terms and change only by an amendment "
    "(a new version the parties sign again)."
)
MSG_PLAN_HAS_ROUNDS = "Plan {pk} has rounds: {fields} cannot change; a change is a new plan."
MSG_DATASET_BUDGETED = "Dataset {pk} has a budget ledger: {fields} cannot change."
MSG_ROUND_FIELDS = "Round {pk}: {fields} never change."
MSG_ROUND_STATUS = "Round {pk} cannot go from {old} to {new} (ARCHITECTURE.md, Rounds)."
MSG_ROUND_PHASE = "Round {pk} ({status}) cannot move from phase {old!r} to {new!r}."
MSG_APPROVAL_FIXED = "Approval {pk}: a recorded decision never changes ({fields})."
MSG_APPROVER_NOT_INVOLVED = "Organisation {organisation} has no dataset in round {round}; it cannot approve or reject it."

# The terms of an agreement, in the order they are serialised for signing. Changing this list
# changes every terms hash: add to the end and bump TERMS_FORMAT.
TERMS_FORMAT = 1
TERM_FIELDS = (
    "title",
    "purposes",
    "valid_from",
    "valid_until",
    "min_participants",
    "min_noise_multiplier",
    "max_clip_norm",
    "max_delta",
    "max_epsilon_per_round",
    "max_epsilon_budget",
    "approval_rule",
    "approval_quorum",
    "auditor_access",
    "exit_notice_days",
    "data_retention",
)


class Agreement(GuardedModel):
    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        AWAITING_SIGNATURES = "awaiting_signatures", _("Awaiting signatures")
        ACTIVE = "active", _("Active")
        SUSPENDED = "suspended", _("Suspended")
        TERMINATED = "terminated", _("Terminated")
        EXPIRED = "expired", _("Expired")

    class ApprovalRule(models.TextChoices):
        EVERY_PARTY = "every_party", _("Every party approves")
        QUORUM = "quorum", _("A quorum of k parties approves")

    class AuditorAccess(models.TextChoices):
        LEDGER = "ledger", _("Budget ledgers only")
        LEDGER_AND_GOVERNANCE = "ledger_and_governance", _("Ledgers and governance history")

    title = models.CharField(max_length=200)
    purposes = models.JSONField(help_text="Permitted purposes, a list of short phrases.")
    valid_from = models.DateField()
    valid_until = models.DateField()
    parties = models.ManyToManyField(Organisation, through="AgreementParty", related_name="agreements")
    min_participants = models.PositiveIntegerField(default=2)
    min_noise_multiplier = models.FloatField(help_text="DP floor: smallest noise multiplier z a round may use.")
    max_clip_norm = models.FloatField(help_text="DP ceiling: largest clipping norm C.")
    max_delta = models.FloatField(help_text="DP ceiling: largest delta a dataset may declare.")
    max_epsilon_per_round = models.FloatField(help_text="DP ceiling: largest epsilon one round may spend on a dataset.")
    max_epsilon_budget = models.FloatField(help_text="Largest total epsilon budget a dataset may be given.")
    approval_rule = models.CharField(max_length=16, choices=ApprovalRule.choices, default=ApprovalRule.EVERY_PARTY)
    approval_quorum = models.PositiveIntegerField(null=True, blank=True)
    auditors = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="audited_agreements")
    auditor_access = models.CharField(
        max_length=32, choices=AuditorAccess.choices, default=AuditorAccess.LEDGER_AND_GOVERNANCE
    )
    exit_notice_days = models.PositiveIntegerField(default=30)
    data_retention = models.TextField(blank=True)

    status = models.CharField(max_length=24, choices=Status.choices, default=Status.DRAFT)
    version = models.PositiveIntegerField(default=1, help_text="1 for the original terms, +1 per amendment.")
    terms_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the terms being signed.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(valid_until__gt=models.F("valid_from")), name="agreement_dates_ordered"),
            models.CheckConstraint(condition=Q(min_participants__gte=1), name="agreement_min_participants_positive"),
            models.CheckConstraint(condition=Q(min_noise_multiplier__gt=0), name="agreement_noise_floor_positive"),
            models.CheckConstraint(condition=Q(max_clip_norm__gt=0), name="agreement_clip_positive"),
            models.CheckConstraint(condition=Q(max_delta__gt=0, max_delta__lt=1), name="agreement_delta_in_unit"),
            models.CheckConstraint(condition=Q(max_epsilon_per_round__gt=0), name="agreement_round_epsilon_positive"),
            models.CheckConstraint(condition=Q(max_epsilon_budget__gt=0), name="agreement_budget_positive"),
            models.CheckConstraint(
                condition=Q(approval_rule="every_party") | Q(approval_quorum__gte=1),
                name="agreement_quorum_set",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} (v{self.version})"

    def terms(self, *, parties=None, auditors=None) -> dict:
        """The terms as plain JSON values, in TERM_FIELDS order, with the parties' slugs and the
        auditors' usernames: the stored ones, or `parties` (organisations) and `auditors`
        (users) about to be stored (an amendment hashes its new lists before writing them)."""
        out = {"format": TERMS_FORMAT, "version": self.version}
        for name in TERM_FIELDS:
            value = getattr(self, name)
            if hasattr(value, "isoformat"):
                value = value.isoformat()
            out[name] = value
        if parties is not None:
            out["parties"] = sorted({o.slug for o in parties})
        else:
            out["parties"] = sorted(self.parties.values_list("slug", flat=True)) if self.pk else []
        if auditors is not None:
            out["auditors"] = sorted({u.username for u in auditors})
        else:
            out["auditors"] = sorted(self.auditors.values_list("username", flat=True)) if self.pk else []
        return out

    def canonical_terms(self, **lists) -> bytes:
        """Canonical serialisation: sorted keys, no whitespace, UTF-8; what parties sign."""
        return json.dumps(self.terms(**lists), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def compute_terms_hash(self, **lists) -> str:
        return hashlib.sha256(self.canonical_terms(**lists)).hexdigest()

    @classmethod
    def members_frozen(cls, pk) -> str | None:
        """The agreement's status if its parties and auditors may no longer change, else None.

        They are part of the signed terms (`terms`): editable in a draft, and while the
        current version awaits its first signature (an amendment writes its new lists then);
        from the first signature of a version on, only a new amendment changes them. The
        same rule is a database trigger (federation/triggers.py)."""
        row = cls.objects.filter(pk=pk).values("status", "version").first()
        if row is None or row["status"] == cls.Status.DRAFT:
            return None
        if row["status"] == cls.Status.AWAITING_SIGNATURES and not AgreementSignature.objects.filter(
            agreement_id=pk, version=row["version"]
        ).exists():
            return None
        return row["status"]

    @property
    def terms_frozen(self) -> bool:
        return self.status != self.Status.DRAFT

    # Guards (ARCHITECTURE.md, Trust 4): out of draft, the signed terms, their version and hash
    # change only by an amendment, which writes them in the same UPDATE that bumps the version
    # by one and sends the agreement back for signature (services.agreements.agreement_amend).
    GUARDED_FIELDS = (*TERM_FIELDS, "version", "terms_hash")
    CONTEXT_FIELDS = ("status",)
    AMENDABLE_STATES = ("awaiting_signatures", "active", "suspended")

    @classmethod
    def guard_change(cls, pk, old: dict, new: dict) -> None:
        changed = changed_fields(old, new, cls.GUARDED_FIELDS)
        if not changed or old["status"] == cls.Status.DRAFT:
            return
        if (
            old["status"] in cls.AMENDABLE_STATES
            and new["status"] == cls.Status.AWAITING_SIGNATURES
            and new["version"] == old["version"] + 1
        ):
            return
        raise RecordFrozen(
            MSG_TERMS_SIGNED.format(pk=pk, status=old["status"], fields=", ".join(changed)),
            model="Agreement", pk=pk, fields=changed,
        )

    def is_within_dates(self, today=None) -> bool:
        today = today or timezone.localdate()
        return self.valid_from <= today <= self.valid_until

    def approvals_required(self, n_parties: int) -> int:
        if self.approval_rule == self.ApprovalRule.QUORUM:
            return min(self.approval_quorum or n_parties, n_parties)
        return n_parties


class AgreementParty(models.Model):
    """An organisation's place in an agreement, and its exit, which never erases history."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        NOTICE = "notice", _("Notice given")
        EXITED = "exited", _("Exited")

    agreement = models.ForeignKey(Agreement, on_delete=models.CASCADE, related_name="party_links")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="agreement_links")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    notice_given_at = models.DateTimeField(null=True, blank=True)
    exit_effective_at = models.DateTimeField(null=True, blank=True)
    notice_given_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agreement", "organisation"], name="agreement_party_unique"),
            models.CheckConstraint(
                condition=Q(status="active") | Q(notice_given_at__isnull=False, exit_effective_at__isnull=False),
                name="agreement_party_notice_dated",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organisation} in {self.agreement}"

    def effective_status(self, now=None) -> str:
        """NOTICE turns into EXITED once the notice period has run, even before the sweep
        task writes it down: governance never trusts a stale status."""
        now = now or timezone.now()
        if self.status == self.Status.NOTICE and self.exit_effective_at and self.exit_effective_at <= now:
            return self.Status.EXITED
        return self.status


class AgreementSignature(models.Model):
    agreement = models.ForeignKey(Agreement, on_delete=models.CASCADE, related_name="signatures")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="signatures")
    version = models.PositiveIntegerField()
    terms_hash = models.CharField(max_length=64)
    signed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    signed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["signed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["agreement", "organisation", "version"], name="agreement_signature_once_per_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organisation} signed {self.agreement} v{self.version}"


class Dataset(GuardedModel):
    """Metadata of a partner's dataset. The records never leave the partner."""

    class Accountant(models.TextChoices):
        RDP = "rdp", _("Rényi DP (default)")
        PLD = "pld", _("Privacy loss distribution")

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="datasets")
    agreement = models.ForeignKey(Agreement, on_delete=models.PROTECT, related_name="datasets")
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    record_count = models.PositiveIntegerField()
    feature_names = models.JSONField()
    label_name = models.CharField(max_length=200)
    label_classes = models.JSONField()
    feature_bounds = models.JSONField(
        default=list, blank=True, help_text="Public [low, high] per feature, used for scaling at the partner."
    )
    # Public scaling declarations (federation/learning/data.py): a transform per feature
    # applied before scaling, and whether features are scaled to [-1, 1] instead of [0, 1].
    feature_transforms = models.JSONField(
        default=dict, blank=True, help_text="Public transform per feature before scaling: {feature: log1p | sqrt}."
    )
    centred = models.BooleanField(default=False, help_text="Scale every feature to [-1, 1] instead of [0, 1].")
    epsilon_budget = models.FloatField()
    delta = models.FloatField()
    accountant = models.CharField(max_length=3, choices=Accountant.choices, default=Accountant.RDP)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(condition=Q(record_count__gt=0), name="dataset_records_positive"),
            models.CheckConstraint(condition=Q(epsilon_budget__gt=0), name="dataset_epsilon_positive"),
            models.CheckConstraint(condition=Q(delta__gt=0, delta__lt=1), name="dataset_delta_in_unit"),
        ]

    def __str__(self) -> str:
        return self.slug

    # Once its ledger has an entry, what the ledger converts and charges by is fixed; the
    # budget itself grows only by a GRANT (the ledger takes the smaller of the two).
    GUARDED_FIELDS = ("organisation", "agreement", "delta", "accountant", "record_count")

    @classmethod
    def guard_change(cls, pk, old: dict, new: dict) -> None:
        changed = changed_fields(old, new, cls.GUARDED_FIELDS)
        if not changed:
            return
        from django.apps import apps

        if apps.get_model("accounting", "LedgerEntry").objects.filter(dataset_id=pk).exists():
            raise RecordFrozen(MSG_DATASET_BUDGETED.format(pk=pk, fields=", ".join(changed)), model="Dataset", pk=pk, fields=changed)

    def schema(self) -> dict:
        return {
            "feature_names": list(self.feature_names),
            "label_name": self.label_name,
            "label_classes": [str(c) for c in self.label_classes],
            "feature_bounds": [list(b) for b in self.feature_bounds] if self.feature_bounds else None,
            "feature_transforms": dict(self.feature_transforms or {}),
            "centred": bool(self.centred),
        }

    def scaling(self) -> tuple:
        """What decides how a record becomes model input besides the bounds: the declared
        transforms and centring. Partners whose updates are averaged must agree on it."""
        return (tuple(sorted((self.feature_transforms or {}).items())), bool(self.centred))


class TrainingPlan(GuardedModel):
    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        PAUSED = "paused", _("Paused")
        STOPPED = "stopped", _("Stopped")
        COMPLETED = "completed", _("Completed")

    agreement = models.ForeignKey(Agreement, on_delete=models.PROTECT, related_name="plans")
    name = models.CharField(max_length=200)
    purpose = models.CharField(max_length=200)
    datasets = models.ManyToManyField(Dataset, related_name="plans")
    model_spec = models.JSONField(help_text='e.g. {"kind": "logreg"} or {"kind": "mlp", "hidden": [64]}')
    feature_names = models.JSONField()
    label_name = models.CharField(max_length=200)
    label_classes = models.JSONField()
    rounds_total = models.PositiveIntegerField(default=10)
    noise_multiplier = models.FloatField()
    clip_norm = models.FloatField()
    batch_size = models.PositiveIntegerField(default=64)
    sampling_rate = models.FloatField(
        null=True,
        blank=True,
        help_text="Poisson sampling rate q used on every dataset; empty: q = batch size / records of each dataset.",
    )
    local_steps = models.PositiveIntegerField(default=10)
    learning_rate = models.FloatField(default=0.5)
    momentum = models.FloatField(default=0.0)
    server_learning_rate = models.FloatField(default=1.0)
    server_optimizer = models.JSONField(
        default=dict, blank=True, help_text='Server optimiser on the aggregate, e.g. {"kind": "adam", "lr": 0.05}; empty: FedAvg.'
    )
    eval_noise_multiplier = models.FloatField(
        null=True, blank=True, help_text="Noise of the evaluation counts; empty disables the release."
    )
    secagg_threshold = models.PositiveIntegerField(
        null=True, blank=True, help_text="Survivors needed to unmask; empty means two thirds of the participants."
    )
    phase_timeout_seconds = models.PositiveIntegerField(default=120)
    explanation = models.TextField(
        blank=True, default="", help_text="Why the schedule is what it is: the planner's reasons, and the values set by hand."
    )
    # The retry policy (ARCHITECTURE.md, Rounds): a try aborted for dropouts below the threshold
    # or a missed deadline is followed by a new try after the backoff; after this many failed
    # tries in a row the plan is paused, saying why, until someone resumes it. Not a DP
    # parameter: it changes only through plan_retry_policy_set, which records an event.
    max_consecutive_failures = models.PositiveIntegerField(
        default=3, help_text="Failed tries in a row after which the plan is paused (1 = no retry)."
    )
    retry_backoff_seconds = models.PositiveIntegerField(default=30, help_text="Wait before retrying an aborted round.")
    consecutive_failures = models.PositiveIntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True, help_text="When the next try of an aborted round is requested.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Why the plan is paused, stopped or completed.
    stopped_reason = models.TextField(blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(noise_multiplier__gt=0), name="plan_noise_positive"),
            models.CheckConstraint(condition=Q(clip_norm__gt=0), name="plan_clip_positive"),
            models.CheckConstraint(condition=Q(batch_size__gte=1), name="plan_batch_positive"),
            models.CheckConstraint(
                condition=Q(sampling_rate__isnull=True) | Q(sampling_rate__gt=0, sampling_rate__lte=1), name="plan_sampling_rate_in_unit"
            ),
            models.CheckConstraint(condition=Q(local_steps__gte=1), name="plan_steps_positive"),
            models.CheckConstraint(condition=Q(rounds_total__gte=1), name="plan_rounds_positive"),
            models.CheckConstraint(condition=Q(learning_rate__gt=0), name="plan_lr_positive"),
            models.CheckConstraint(condition=Q(max_consecutive_failures__gte=1), name="plan_failures_limit_positive"),
            models.CheckConstraint(
                condition=Q(eval_noise_multiplier__isnull=True) | Q(eval_noise_multiplier__gt=0),
                name="plan_eval_noise_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    # What a round charges and what the partners run: fixed from the first round on.
    GUARDED_FIELDS = (
        "agreement", "purpose", "model_spec", "feature_names", "label_name", "label_classes", "rounds_total",
        "noise_multiplier", "clip_norm", "batch_size", "sampling_rate", "local_steps", "learning_rate", "momentum",
        "server_learning_rate", "server_optimizer", "eval_noise_multiplier", "secagg_threshold",
    )

    @classmethod
    def guard_change(cls, pk, old: dict, new: dict) -> None:
        changed = changed_fields(old, new, cls.GUARDED_FIELDS)
        if changed and TrainingRound.objects.filter(plan_id=pk).exists():
            raise RecordFrozen(MSG_PLAN_HAS_ROUNDS.format(pk=pk, fields=", ".join(changed)), model="TrainingPlan", pk=pk, fields=changed)

    def dp_params_for(self, dataset: Dataset) -> dict:
        """The exact DP parameters a round of this plan uses on `dataset`: what is charged."""
        return {
            # One rate for every dataset, or one expected batch (so a smaller dataset samples
            # a larger share of its records and pays more epsilon per round).
            "q": self.sampling_rate if self.sampling_rate is not None else min(1.0, self.batch_size / dataset.record_count),
            "z": self.noise_multiplier,
            "K": self.local_steps,
            "C": self.clip_norm,
            "eval_noise_multiplier": self.eval_noise_multiplier,
            # The partner releases two Gaussian counts (correct, total) per round.
            "eval_count": 2 if self.eval_noise_multiplier else 0,
        }

    def threshold_for(self, n_participants: int) -> int:
        """Secure-aggregation threshold t: survivors needed to unmask the sum."""
        if self.secagg_threshold:
            return min(self.secagg_threshold, n_participants)
        return max(2, math.ceil(2 * n_participants / 3)) if n_participants >= 2 else n_participants

    def schema(self) -> dict:
        return {
            "feature_names": list(self.feature_names),
            "label_name": self.label_name,
            "label_classes": [str(c) for c in self.label_classes],
        }


class TrainingRound(GuardedModel):
    class Status(models.TextChoices):
        REQUESTED = "requested", _("Requested")
        BLOCKED = "blocked", _("Blocked")
        AWAITING_APPROVAL = "awaiting_approval", _("Awaiting approval")
        APPROVED = "approved", _("Approved")
        REJECTED = "rejected", _("Rejected")
        RUNNING = "running", _("Running")
        AGGREGATING = "aggregating", _("Aggregating")
        COMPLETED = "completed", _("Completed")
        FAILED = "failed", _("Failed")
        ABORTED = "aborted", _("Aborted")

    LIVE_STATES = (
        Status.REQUESTED,
        Status.AWAITING_APPROVAL,
        Status.APPROVED,
        Status.RUNNING,
        Status.AGGREGATING,
    )
    FINAL_STATES = (Status.BLOCKED, Status.REJECTED, Status.COMPLETED, Status.FAILED, Status.ABORTED)

    plan = models.ForeignKey(TrainingPlan, on_delete=models.PROTECT, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.REQUESTED)
    participants = models.ManyToManyField(Dataset, through="RoundParticipant", related_name="rounds")
    governance_report = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True, help_text="Why the round was blocked, rejected, failed or aborted.")
    phase = models.CharField(max_length=32, blank=True)
    phase_deadline = models.DateTimeField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=128, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["plan_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "number"], name="round_number_unique_per_plan"),
            models.UniqueConstraint(
                fields=["plan", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="round_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan} round {self.number}"

    # The state machine (ARCHITECTURE.md, Rounds), as the services drive it: every status
    # change goes through services.rounds._transition.
    TRANSITIONS = {
        Status.REQUESTED: (Status.BLOCKED, Status.AWAITING_APPROVAL, Status.ABORTED, Status.FAILED),
        Status.AWAITING_APPROVAL: (Status.APPROVED, Status.REJECTED, Status.ABORTED, Status.FAILED),
        Status.APPROVED: (Status.RUNNING, Status.BLOCKED, Status.ABORTED, Status.FAILED),
        Status.RUNNING: (Status.AGGREGATING, Status.ABORTED, Status.FAILED),
        Status.AGGREGATING: (Status.COMPLETED, Status.ABORTED, Status.FAILED),
    }
    # Phases only move forward; "" before the protocol opens and again once COMPLETED.
    PHASES = ("", "advertise_keys", "share_keys", "masked_input", "unmask_response", "aggregate", "evaluate")
    STATUS_PHASES = {
        Status.RUNNING: ("", "advertise_keys", "share_keys", "masked_input"),
        Status.AGGREGATING: ("unmask_response", "aggregate", "evaluate"),
    }
    GUARDED_FIELDS = ("plan", "number", "status", "phase")

    @classmethod
    def guard_change(cls, pk, old: dict, new: dict) -> None:
        fixed = changed_fields(old, new, ("plan", "number"))
        if fixed:
            raise RecordFrozen(MSG_ROUND_FIELDS.format(pk=pk, fields=", ".join(fixed)), model="TrainingRound", pk=pk, fields=fixed)
        if old["status"] != new["status"] and new["status"] not in cls.TRANSITIONS.get(old["status"], ()):
            raise IllegalTransition(
                MSG_ROUND_STATUS.format(pk=pk, old=old["status"], new=new["status"]), pk=pk, field="status", old=old["status"]
            )
        if old["phase"] != new["phase"] or old["status"] != new["status"]:
            completed = new["status"] == cls.Status.COMPLETED and new["phase"] == ""
            forward = (
                old["status"] not in cls.FINAL_STATES
                and new["phase"] in cls.PHASES
                and (old["phase"] not in cls.PHASES or cls.PHASES.index(new["phase"]) > cls.PHASES.index(old["phase"]))
            )
            consistent = new["phase"] in cls.STATUS_PHASES.get(new["status"], (new["phase"],))
            if (old["phase"] != new["phase"] and not (completed or forward)) or not consistent:
                raise IllegalTransition(
                    MSG_ROUND_PHASE.format(pk=pk, status=new["status"], old=old["phase"], new=new["phase"]),
                    pk=pk, field="phase", old=old["phase"],
                )

    def participating_datasets(self):
        """The round's datasets, less those left out at its start (their agent was offline):
        what the budget reserves and the protocol runs with."""
        taking_part = [s for s in RoundParticipant.Status.values if s != RoundParticipant.Status.LEFT_OUT]
        return Dataset.objects.filter(round_links__round=self, round_links__status__in=taking_part).order_by("id")

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE_STATES


class RoundParticipant(models.Model):
    class Status(models.TextChoices):
        INVITED = "invited", _("Invited")
        ACTIVE = "active", _("Taking part")
        DROPPED = "dropped", _("Dropped out")
        FINISHED = "finished", _("Finished")
        # Not taken into the round at its start (its agent was offline or not enrolled):
        # nothing reserved on its dataset; why is in round.metrics["left_out"].
        LEFT_OUT = "left_out", _("Left out")

    round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="participant_links")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="round_links")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.INVITED)
    last_phase = models.CharField(max_length=32, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # Why the partner's agent declined the round (federation/agent/checks.py): a
    # stable code and the agent's own words, shown on the round page and in the round API.
    refusal_code = models.CharField(max_length=64, blank=True)
    refusal_reason = models.TextField(blank=True)
    refused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["round", "dataset"], name="round_participant_unique"),
        ]


class ImmutableRow(Exception):
    """A write-once row (a signed round ticket) was about to be changed."""


class RoundTicket(models.Model):
    """What a round reserved on one dataset, frozen and signed with the ledger key
    (ARCHITECTURE.md, Ledger 1): the agent runs this document, never the plan's fields as they
    are when it polls. `document` is the ticket without its signature; `signature` is the
    ledger key's Ed25519 signature of TICKET_DOMAIN + canonical JSON of `document`, and
    `ticket_hash` the SHA-256 of those same bytes. Written once, in the transaction that
    reserved the budget; never updated.

    The partner's receipt (signed with its enrolled identity key) is stored beside it once
    it arrives; a round whose masked input was sent without one is flagged."""

    participant = models.OneToOneField(RoundParticipant, on_delete=models.CASCADE, related_name="ticket")
    document = models.JSONField()
    signature = models.CharField(max_length=128)
    ticket_hash = models.CharField(max_length=64, unique=True)
    key_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    receipt = models.JSONField(null=True, blank=True)
    receipt_at = models.DateTimeField(null=True, blank=True)

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("update_fields"):
            raise ImmutableRow("a round ticket is written once; it is never changed")
        fields = set(kwargs.get("update_fields") or ())
        if fields - {"receipt", "receipt_at"}:
            raise ImmutableRow("a round ticket is written once; only its receipt may be added")
        if fields and RoundTicket.objects.filter(pk=self.pk, receipt__isnull=False).exists():
            raise ImmutableRow("this ticket's receipt is already stored")
        super().save(*args, **kwargs)


class RoundApproval(GuardedModel):
    class Decision(models.TextChoices):
        APPROVE = "approve", _("Approve")
        REJECT = "reject", _("Reject")

    round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="approvals")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="approvals")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    standing_approval = models.ForeignKey(
        "StandingApproval", null=True, blank=True, on_delete=models.PROTECT, related_name="uses"
    )
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["round", "organisation"], name="approval_once_per_organisation"),
            models.CheckConstraint(condition=Q(decision="approve") | ~Q(reason=""), name="rejection_has_reason"),
        ]

    # A decision, once recorded, stays; only an organisation with a dataset in the round (so a
    # party to the agreement) records one (services.rounds checks who may; this checks what).
    GUARDED_FIELDS = ("round", "organisation", "decision")

    @classmethod
    def guard_change(cls, pk, old: dict, new: dict) -> None:
        changed = changed_fields(old, new, cls.GUARDED_FIELDS)
        if changed:
            raise RecordFrozen(MSG_APPROVAL_FIXED.format(pk=pk, fields=", ".join(changed)), model="RoundApproval", pk=pk, fields=changed)

    def save(self, *args, **kwargs):
        if self._state.adding:
            involved = RoundParticipant.objects.filter(
                round_id=self.round_id,
                dataset__organisation_id=self.organisation_id,
                round__plan__agreement__party_links__organisation_id=self.organisation_id,
            ).exists()
            if not involved:
                raise ApproverNotInvolved(
                    MSG_APPROVER_NOT_INVOLVED.format(organisation=self.organisation_id, round=self.round_id),
                    fields={"organisation": ["Not involved in this round."]},
                )
        super().save(*args, **kwargs)


class StandingApproval(models.Model):
    """A representative's approval of a plan's future rounds, up to a count or an epsilon."""

    plan = models.ForeignKey(TrainingPlan, on_delete=models.CASCADE, related_name="standing_approvals")
    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="standing_approvals")
    max_rounds = models.PositiveIntegerField(null=True, blank=True)
    max_epsilon = models.FloatField(null=True, blank=True, help_text="Per dataset of this organisation.")
    given_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    given_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(max_rounds__isnull=False) | Q(max_epsilon__isnull=False), name="standing_approval_bounded"
            ),
            models.CheckConstraint(
                condition=Q(max_epsilon__isnull=True) | Q(max_epsilon__gt=0), name="standing_approval_epsilon_positive"
            ),
        ]

    def rounds_used(self) -> int:
        """Rounds this approval let use the organisation's data. A round that never ran
        (blocked by a governance check, rejected by another party) and a try aborted before
        any update could leave (its budget released: ARCHITECTURE.md, Ledger 2) trained
        nothing and spent nothing, so they do not use up an approval given for "up to N
        rounds". A try aborted or failed once the masked input opened is decided per dataset
        (Ledger 2): it counts for this organisation if any of its datasets in the round stayed
        charged (its masked input came, like a completed round; its epsilon counts against
        `max_epsilon`), not if every one of them was released (it sent nothing)."""
        released_phases = ("", "advertise_keys", "share_keys")
        stopped = (TrainingRound.Status.ABORTED, TrainingRound.Status.FAILED)
        ended_unspent = Q(round__status__in=(TrainingRound.Status.BLOCKED, TrainingRound.Status.REJECTED)) | Q(
            round__status__in=stopped, round__phase__in=released_phases
        )
        uses = self.uses.exclude(ended_unspent)
        stopped_ids = set(uses.filter(round__status__in=stopped).values_list("round_id", flat=True))
        if not stopped_ids:
            return uses.count()
        mine = RoundParticipant.objects.filter(round_id__in=stopped_ids, dataset__organisation_id=self.organisation_id)
        participating = set(mine.values_list("round_id", "dataset_id"))
        released = set(
            mine.filter(
                dataset__ledger_entries__round_id=models.F("round_id"), dataset__ledger_entries__kind="RELEASE"
            ).values_list("round_id", "dataset_id")
        )
        sent_nothing = [r for r in stopped_ids if (mine_in_r := {p for p in participating if p[0] == r}) and mine_in_r <= released]
        return uses.count() - len(sent_nothing)


class GovernanceEvent(models.Model):
    """Every change of governance state, with actor and time. Append-only, read by auditors."""

    class Kind(models.TextChoices):
        AGREEMENT_CREATED = "agreement_created", _("Agreement created")
        AGREEMENT_EDITED = "agreement_edited", _("Draft edited")
        AGREEMENT_SUBMITTED = "agreement_submitted", _("Agreement sent for signature")
        AGREEMENT_SIGNED = "agreement_signed", _("Agreement signed")
        AGREEMENT_ACTIVATED = "agreement_activated", _("Agreement active")
        AGREEMENT_AMENDED = "agreement_amended", _("Agreement amended")
        AGREEMENT_SUSPENDED = "agreement_suspended", _("Agreement suspended")
        AGREEMENT_RESUMED = "agreement_resumed", _("Agreement resumed")
        AGREEMENT_TERMINATED = "agreement_terminated", _("Agreement terminated")
        AGREEMENT_EXPIRED = "agreement_expired", _("Agreement expired")
        EXIT_NOTICE = "exit_notice", _("Exit notice given")
        PARTY_EXITED = "party_exited", _("Party exited")
        DATASET_REGISTERED = "dataset_registered", _("Dataset registered")
        BUDGET_CHANGED = "budget_changed", _("Budget changed")
        PLAN_CREATED = "plan_created", _("Training plan created")
        PLAN_STOPPED = "plan_stopped", _("Training plan stopped")
        PLAN_PAUSED = "plan_paused", _("Training plan paused")
        PLAN_RESUMED = "plan_resumed", _("Training plan resumed")
        PLAN_RETRY_SCHEDULED = "plan_retry_scheduled", _("Round retry scheduled")
        PLAN_POLICY_CHANGED = "plan_policy_changed", _("Retry policy changed")
        ROUND_REQUESTED = "round_requested", _("Round requested")
        ROUND_BLOCKED = "round_blocked", _("Round blocked")
        ROUND_APPROVED = "round_approved", _("Round approved")
        ROUND_REJECTED = "round_rejected", _("Round rejected")
        ROUND_STARTED = "round_started", _("Round started")
        ROUND_COMPLETED = "round_completed", _("Round completed")
        ROUND_FAILED = "round_failed", _("Round failed")
        ROUND_ABORTED = "round_aborted", _("Round aborted")
        STANDING_APPROVAL = "standing_approval", _("Standing approval given")
        AUDITOR_ASSIGNED = "auditor_assigned", _("Auditor assigned")
        AGENT_ENROLLED = "agent_enrolled", _("Partner agent enrolled")
        MEMBER_REMOVED = "member_removed", _("Member removed from an organisation")

    kind = models.CharField(max_length=32, choices=Kind.choices)
    agreement = models.ForeignKey(Agreement, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    round = models.ForeignKey(TrainingRound, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150, blank=True, help_text="Kept even if the user is later removed.")
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.get_kind_display()}: {self.message}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError("governance events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("governance events are append-only")


def default_exit_date(agreement: Agreement, now=None):
    return (now or timezone.now()) + timedelta(days=agreement.exit_notice_days)


class ApiToken(models.Model):
    """A machine's token: stored as a SHA-256 hash, with scopes and an expiry.

    The key itself is shown once, when created; fedgov keeps only its hash and a short
    prefix to recognise it in lists.
    """

    class Scope(models.TextChoices):
        READ = "read", _("Read")
        TRIGGER = "trigger", _("Trigger rounds")
        APPROVE = "approve", _("Approve rounds")
        AGENT = "agent", _("Partner agent")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # The token that minted this one (None: created by a person, a password or a command). A
    # child never outlives or outranks its parent, and revoking a token revokes its descendants.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user}, {', '.join(self.scopes)})"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def is_valid(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ModelVersion(models.Model):
    """A global model: version 0 is the plan's initial model, version n the result of round n.

    The parameters are one flat float32 vector (see federation.learning); its SHA-256 is what
    partners and auditors compare.
    """

    plan = models.ForeignKey(TrainingPlan, on_delete=models.PROTECT, related_name="model_versions")
    round = models.OneToOneField(
        TrainingRound, null=True, blank=True, on_delete=models.PROTECT, related_name="model_version"
    )
    version = models.PositiveIntegerField()
    params = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    metrics = models.JSONField(default=dict, blank=True)
    # The plan's server optimiser state after this version (float32 vector; empty for FedAvg).
    optimizer_state = models.BinaryField(default=b"", blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["plan_id", "version"]
        constraints = [models.UniqueConstraint(fields=["plan", "version"], name="model_version_unique")]

    def __str__(self) -> str:
        return f"{self.plan} model v{self.version}"


class AgentIdentity(models.Model):
    """A partner agent's long-term Ed25519 identity key, registered at enrolment. Secure
    aggregation's AdvertiseKeys messages are signed with it."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="agent_identities")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agent_identities")
    public_key = models.CharField(max_length=64, help_text="Raw Ed25519 public key, hex.")
    enrolled_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-enrolled_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation"], condition=Q(revoked_at__isnull=True), name="one_live_agent_key_per_organisation"
            ),
        ]


class AgentStatus(models.Model):
    """What the coordinator knows of an organisation's partner agent: when it enrolled, when
    it last polled (written at most every few seconds: the poll is the hot path), the software
    it runs (its User-Agent), and the agreements whose terms it holds ({agreement id: terms
    hash}, as handed out on its last poll). Its refusals are on the round participants."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="agent_status")
    enrolled_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    software_version = models.CharField(max_length=64, blank=True)
    terms_held = models.JSONField(default=dict, blank=True)
    terms_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "agent statuses"


class RoundProtocol(models.Model):
    """The coordinator's secure-aggregation state for one round, beside the round row.

    `state` is the SecAggServer's serialised state without the partners' contributions (keys,
    who answered: O(n)), `running_sum` the masked inputs summed so far (d uint32 words, never
    an individual input). The O(n^2) parts live one row per party: each accepted ShareKeys or
    unmask response in `ProtocolMessage`, each recipient's relay in `ProtocolRelay`, so that
    taking one message or answering one poll handles O(n) data.
    Writes happen under the round's row lock.
    """

    round = models.OneToOneField(TrainingRound, on_delete=models.CASCADE, related_name="protocol")
    config = models.JSONField(default=dict)
    state = models.JSONField(default=dict)
    running_sum = models.BinaryField(null=True, blank=True)
    pending = models.JSONField(default=list, blank=True, help_text="Who the current phase still waits for.")
    updated_at = models.DateTimeField(auto_now=True)


class ProtocolMessage(models.Model):
    """One partner's accepted contribution to a secure-aggregation phase (its sealed shares
    for every other member, or its unmasking shares): `secagg.Contribution.data`.

    Written under the round's row lock when the message is accepted; read back all at once,
    only by the phase's close (ShareKeys) or the aggregation (unmask responses), and deleted
    once they are consumed.
    """

    round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="protocol_messages")
    phase = models.CharField(max_length=32)
    party = models.CharField(max_length=64, help_text="The sender's organisation slug.")
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # The protocol refuses a second message from a sender in a phase; so does the database.
            models.UniqueConstraint(fields=["round", "phase", "party"], name="protocol_message_once_per_party_and_phase"),
        ]


class ProtocolRelay(models.Model):
    """What the coordinator forwards in a phase, opaque to it (base64): to one recipient
    (`party` = its slug) or to everyone (`party` = "*"). Replaced at every phase close."""

    EVERYONE = "*"

    round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="protocol_relays")
    phase = models.CharField(max_length=32, help_text="The phase during which it is handed out.")
    party = models.CharField(max_length=64)
    body = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["round", "phase", "party"], name="protocol_relay_once_per_party_and_phase"),
        ]


class UserPreference(models.Model):
    """A person's settings that follow them from browser to browser: the UI language.

    Stored when they pick a language with the switcher (federation.i18n.set_language) and
    applied on every request once they are signed in, over the cookie and Accept-Language.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preference")
    language = models.CharField(_("language"), max_length=8, choices=settings.LANGUAGES)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("user preference")
        verbose_name_plural = _("user preferences")
