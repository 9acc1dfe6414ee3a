"""Training plans: defined by administrators, read by the parties and auditors."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status

from ..access import require_administrator, visible_agreements, visible_datasets
from ..models import TrainingPlan
from ..selectors.plans import plans_for
from ..services.plan_checks import PLANNED_FIELDS
from ..services.plans import (
    plan_create,
    plan_pause,
    plan_retry_policy_set,
)
from ..services.proposals import plan_fill, plan_propose_with_projection
from ..services.rounds import plan_resume
from .base import ApiView, Input
from .fields import VisibleRelatedField
from .filters import PlanFilter


class PlanOutput(serializers.ModelSerializer):
    datasets = serializers.PrimaryKeyRelatedField(many=True, read_only=True, pk_field=serializers.IntegerField())
    model_spec = serializers.DictField()
    feature_names = serializers.ListField(child=serializers.CharField())
    label_classes = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = TrainingPlan
        fields = [
            "id",
            "agreement",
            "name",
            "purpose",
            "status",
            "stopped_reason",
            "datasets",
            "model_spec",
            "feature_names",
            "label_name",
            "label_classes",
            "rounds_total",
            "noise_multiplier",
            "clip_norm",
            "batch_size",
            "sampling_rate",
            "local_steps",
            "learning_rate",
            "momentum",
            "server_learning_rate",
            "eval_noise_multiplier",
            "secagg_threshold",
            "phase_timeout_seconds",
            "explanation",
            "max_consecutive_failures",
            "retry_backoff_seconds",
            "consecutive_failures",
            "retry_at",
            "paused_at",
            "created_at",
        ]
        ref_name = "TrainingPlan"


class PlanScheduleInput(Input):
    """What the planner works from: the agreement, the datasets, the rounds and the model."""

    agreement = VisibleRelatedField(visible=visible_agreements)
    datasets = VisibleRelatedField(visible=visible_datasets, many=True)
    rounds_total = serializers.IntegerField(min_value=1, max_value=100_000, default=10)
    model_spec = serializers.DictField(
        required=False, default=dict, help_text='{"kind": "logreg"} (the default) or {"kind": "mlp", "hidden": [64]}'
    )

    class Meta:
        ref_name = "TrainingPlanScheduleInput"


class PlanProjectionOutput(serializers.Serializer):
    dataset = serializers.CharField()
    epsilon_per_round = serializers.FloatField(help_text="One round, evaluation releases included.")
    plan_epsilon = serializers.FloatField(help_text="Every round of the plan on a fresh budget.")
    spent = serializers.FloatField()
    budget = serializers.FloatField()
    remaining = serializers.FloatField()
    projected_spent = serializers.FloatField(help_text="What is spent composed with every round of the plan.")
    rounds_affordable = serializers.IntegerField()
    fits = serializers.BooleanField()

    class Meta:
        ref_name = "TrainingPlanProjection"


class PlanProposalOutput(serializers.Serializer):
    values = serializers.DictField(help_text="The planner's value of every DP-SGD and FedAvg field of a plan.")
    explanation = serializers.CharField()
    warnings = serializers.ListField(child=serializers.CharField())
    projection = PlanProjectionOutput(many=True)

    class Meta:
        ref_name = "TrainingPlanProposal"


class PlanListView(ApiView):
    """Training plans of the agreements you are a party to or audit (administrators: all).

    A plan is checked against its agreement when it is defined: every failing field is
    listed at once (400 validation_failed). The DP-SGD and FedAvg values left out are the
    planner's proposal (see plans/propose/), and its explanation is kept on the plan."""

    required_scope = {"GET": "read", "POST": "approve"}
    filterset_class = PlanFilter
    ordering_fields = ["created_at", "name", "status"]

    class InputSerializer(Input):
        agreement = VisibleRelatedField(visible=visible_agreements)
        name = serializers.CharField(max_length=200)
        purpose = serializers.CharField(max_length=200)
        datasets = VisibleRelatedField(visible=visible_datasets, many=True)
        model_spec = serializers.DictField(
            required=False, default=dict, help_text='{"kind": "logreg"} (the default) or {"kind": "mlp", "hidden": [64]}'
        )
        rounds_total = serializers.IntegerField(min_value=1, max_value=100_000, default=10)
        batch_size = serializers.IntegerField(min_value=1, max_value=1_000_000, default=64)
        # Left out: the planner's proposal (PLANNED_FIELDS). null where allowed has its own meaning.
        noise_multiplier = serializers.FloatField(required=False)
        clip_norm = serializers.FloatField(required=False)
        sampling_rate = serializers.FloatField(
            required=False, allow_null=True,
            help_text="q on every dataset, in (0, 1]; null: q = batch_size / records of each dataset; left out: the planner's.",
        )
        local_steps = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False)
        learning_rate = serializers.FloatField(required=False)
        momentum = serializers.FloatField(min_value=0, max_value=1, required=False)
        server_learning_rate = serializers.FloatField(required=False)
        server_optimizer = serializers.DictField(required=False, help_text='e.g. {"kind": "adam", "lr": 0.05}; {}: FedAvg.')
        eval_noise_multiplier = serializers.FloatField(required=False, allow_null=True, help_text="null disables the release.")
        secagg_threshold = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1, max_value=100_000)
        phase_timeout_seconds = serializers.IntegerField(min_value=1, max_value=86_400, default=120)
        feature_names = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=10_000)
        label_name = serializers.CharField(max_length=200, required=False)
        label_classes = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=10_000)
        allow_partial = serializers.BooleanField(
            default=False, help_text="Accept a plan whose rounds the remaining budgets cannot all cover (the later rounds are blocked)."
        )
        max_consecutive_failures = serializers.IntegerField(
            min_value=1, max_value=1000, default=3, help_text="Failed tries in a row after which the plan is paused (1: no retry)."
        )
        retry_backoff_seconds = serializers.IntegerField(
            min_value=0, max_value=86_400, default=30, help_text="Wait before a round aborted for dropouts is tried again."
        )

        class Meta:
            ref_name = "TrainingPlanInput"

    def get_queryset(self):
        return plans_for(user=self.request.user)

    @extend_schema(operation_id="plans_list", responses=PlanOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), PlanOutput)

    @extend_schema(operation_id="plans_create", request=InputSerializer, responses={201: PlanOutput})
    def post(self, request):
        require_administrator(request.user, what="training plan", action="create")
        data = dict(self.validated_input(self.InputSerializer))
        data["model_spec"] = data.get("model_spec") or {"kind": "logreg"}
        given = {name: data.pop(name) for name in PLANNED_FIELDS if name in data}
        filled, explanation = plan_fill(
            agreement=data["agreement"], datasets=data["datasets"], rounds_total=data["rounds_total"],
            model_spec=data["model_spec"], given=given,
        )
        plan = plan_create(actor=request.user, **data, **filled, explanation=explanation)
        return self.output(PlanOutput, plans_for(user=request.user).get(pk=plan.pk), status_code=status.HTTP_201_CREATED)


class PlanProposeView(ApiView):
    """The planner's whole schedule for these datasets, its explanation and the whole plan's
    epsilon per dataset against its remaining budget; nothing is saved."""

    required_scope = {"POST": "approve"}

    @extend_schema(operation_id="plans_propose", request=PlanScheduleInput, responses={200: PlanProposalOutput})
    def post(self, request):
        require_administrator(request.user, what="training plan", action="create")
        data = self.validated_input(PlanScheduleInput)
        proposal = plan_propose_with_projection(
            agreement=data["agreement"], datasets=data["datasets"], rounds_total=data["rounds_total"],
            model_spec=data.get("model_spec") or {"kind": "logreg"},
        )
        return self.output(PlanProposalOutput, proposal)


class PlanDetailView(ApiView):
    object_name = "Training plan"

    def object_queryset(self):
        return plans_for(user=self.request.user)

    @extend_schema(operation_id="plans_retrieve", responses=PlanOutput)
    def get(self, request, pk: int):
        return self.output(PlanOutput, self.get_object())


class PlanPauseView(ApiView):
    """Pause an active plan, saying why (an administrator, or a representative of an
    organisation with a dataset in it): no round or retry is requested until it is resumed."""

    object_name = "Training plan"
    required_scope = "trigger"

    class InputSerializer(Input):
        reason = serializers.CharField(max_length=2000, allow_blank=True, default="", trim_whitespace=False)

        class Meta:
            ref_name = "TrainingPlanPauseInput"

    def object_queryset(self):
        return plans_for(user=self.request.user)

    @extend_schema(operation_id="plans_pause", request=InputSerializer, responses=PlanOutput)
    def post(self, request, pk: int):
        plan = self.get_object()
        data = self.validated_input(self.InputSerializer)
        plan_pause(actor=request.user, plan=plan, reason=data["reason"])
        return self.output(PlanOutput, plans_for(user=request.user).get(pk=plan.pk))


class PlanResumeView(ApiView):
    """Resume a paused plan: its count of failed tries starts again from 0 and the next round
    is requested at once (with the same checks and approvals as any round)."""

    object_name = "Training plan"
    required_scope = "trigger"

    def object_queryset(self):
        return plans_for(user=self.request.user)

    @extend_schema(operation_id="plans_resume", request=None, responses=PlanOutput)
    def post(self, request, pk: int):
        plan = self.get_object()
        plan_resume(actor=request.user, plan=plan)
        return self.output(PlanOutput, plans_for(user=request.user).get(pk=plan.pk))


class PlanRetryPolicyView(ApiView):
    """Change the plan's retry policy (not a DP parameter: allowed while rounds run; recorded
    as a governance event)."""

    object_name = "Training plan"
    required_scope = "trigger"

    class InputSerializer(Input):
        max_consecutive_failures = serializers.IntegerField(min_value=1, max_value=1000, required=False)
        retry_backoff_seconds = serializers.IntegerField(min_value=0, max_value=86_400, required=False)

        class Meta:
            ref_name = "TrainingPlanRetryPolicyInput"

    def object_queryset(self):
        return plans_for(user=self.request.user)

    @extend_schema(operation_id="plans_retry_policy", request=InputSerializer, responses=PlanOutput)
    def post(self, request, pk: int):
        plan = self.get_object()
        data = self.validated_input(self.InputSerializer)
        plan_retry_policy_set(actor=request.user, plan=plan, **data)
        return self.output(PlanOutput, plans_for(user=request.user).get(pk=plan.pk))
