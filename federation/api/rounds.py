"""Training rounds: requested through the API (with an Idempotency-Key), approved or rejected
by the representatives whose data they use, read by every party and auditor."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status

from accounting.errors import BudgetExceeded
from fedgov.errors import GovernanceCheckFailed

from .. import governance
from ..access import acting_organisation
from ..models import Organisation, RoundApproval, RoundParticipant, TrainingRound
from ..selectors.plans import plans_for
from ..selectors.rounds import round_context, round_organisations, round_participants, rounds_for
from ..services.rounds import round_approve, round_reject, round_request_once
from .agreements import OrganisationChoice
from .base import ApiView
from .filters import ParticipantFilter, RoundFilter
from .schema import ErrorSerializer

IDEMPOTENCY_HEADER = "Idempotency-Key"


class ApprovalOutput(serializers.Serializer):
    organisation = serializers.IntegerField(source="organisation_id")
    organisation_slug = serializers.CharField(source="organisation.slug")
    decision = serializers.ChoiceField(choices=RoundApproval.Decision.choices)
    reason = serializers.CharField()
    decided_at = serializers.DateTimeField()
    standing = serializers.SerializerMethodField(help_text="Given by a standing approval.")

    class Meta:
        ref_name = "RoundApproval"

    def get_standing(self, approval: RoundApproval) -> bool:
        return approval.standing_approval_id is not None


class GovernanceCheckOutput(serializers.Serializer):
    name = serializers.CharField(help_text="Stable check name, e.g. agreement_active, budget, approvals.")
    passed = serializers.BooleanField()
    reason = serializers.CharField()
    details = serializers.DictField()

    class Meta:
        ref_name = "GovernanceCheck"


class GovernanceReportOutput(serializers.Serializer):
    stage = serializers.ChoiceField(choices=[governance.STAGE_REQUEST, governance.STAGE_START])
    passed = serializers.BooleanField()
    checked_at = serializers.CharField()
    checks = GovernanceCheckOutput(many=True)

    class Meta:
        ref_name = "GovernanceReport"


class RoundOutput(serializers.Serializer):
    """A round. A plain Serializer (not a ModelSerializer, whose field introspection runs on
    every request) reading the page's approvals and participant counts from the context,
    where `RoundViewMixin.context_for` put them with one query each."""

    id = serializers.IntegerField()
    plan = serializers.IntegerField(source="plan_id")
    number = serializers.IntegerField()
    status = serializers.ChoiceField(choices=TrainingRound.Status.choices)
    phase = serializers.CharField()
    phase_deadline = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField()
    governance_report = serializers.SerializerMethodField(help_text="The last governance report (empty before the first check).")
    metrics = serializers.DictField()
    accuracy_interval = serializers.SerializerMethodField(
        help_text="95% interval [low, high] of metrics.accuracy (the evaluation noise and the held-out records' sampling); null without one."
    )
    approvals = serializers.SerializerMethodField()
    participant_count = serializers.SerializerMethodField()
    requested_by = serializers.CharField(source="requested_by_username", allow_null=True, help_text="Username.")
    requested_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "TrainingRound"

    @extend_schema_field(GovernanceReportOutput(allow_null=True))
    def get_governance_report(self, round: TrainingRound) -> dict | None:
        return round.governance_report or None

    @extend_schema_field(serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2, allow_null=True))
    def get_accuracy_interval(self, round: TrainingRound) -> list | None:
        interval = (round.metrics or {}).get("accuracy_interval")
        return [float(interval[0]), float(interval[1])] if interval else None

    @extend_schema_field(ApprovalOutput(many=True))
    def get_approvals(self, round: TrainingRound) -> list:
        approvals = self.context["approvals"].get(round.pk)
        return ApprovalOutput(approvals, many=True).data if approvals else []

    def get_participant_count(self, round: TrainingRound) -> int:
        return self.context["participant_counts"].get(round.pk, 0)


class RoundViewMixin:
    def context_for(self, objects):
        context = super().context_for(objects)
        if all(isinstance(o, TrainingRound) for o in objects):
            context.update(round_context(rounds=objects))
        return context


class RoundListView(RoundViewMixin, ApiView):
    """Rounds of the plans you can see; filter by plan, status and time."""

    filterset_class = RoundFilter
    ordering_fields = ["requested_at", "number", "status", "finished_at"]

    def get_queryset(self):
        return rounds_for(user=self.request.user).order_by("-requested_at", "-id")

    @extend_schema(operation_id="rounds_list", responses=RoundOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), RoundOutput)


class PlanRoundsView(RoundViewMixin, ApiView):
    """GET: the plan's rounds. POST: request the plan's next round.

    The answer carries the round and its governance report: 201 and the round (awaiting
    approval, or approved when standing approvals cover it) when every check passed; 409
    `governance_check_failed` (details: `report`, `round`) when a check failed and the round
    is blocked, or 409 `budget_exceeded` (details: `requested`, `remaining`, `report`,
    `round`) when the remaining budget is the only failed check.

    Send an `Idempotency-Key` header (at most 128 characters, e.g. a UUID) to retry safely:
    a retry with the same key answers 200 with the round the first request created (or the
    same 409), and never starts a second round. Keys are per plan.
    """

    object_name = "Training plan"
    required_scope = {"GET": "read", "POST": "trigger"}
    queryset = TrainingRound.objects.none()  # for the schema: the model the filters describe
    filterset_class = RoundFilter
    ordering_fields = ["requested_at", "number", "status", "finished_at"]

    def object_queryset(self):
        return plans_for(user=self.request.user)

    @extend_schema(operation_id="plans_rounds_list", responses=RoundOutput(many=True))
    def get(self, request, pk: int):
        plan = self.get_object()
        return self.list_response(rounds_for(user=request.user).filter(plan=plan).order_by("-number"), RoundOutput)

    @extend_schema(
        operation_id="plans_rounds_request",
        request=None,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=False,
                description="A key of your choosing (at most 128 characters); a retry with the same key returns the same round.",
            )
        ],
        responses={
            201: OpenApiResponse(RoundOutput, description="A new round; its governance checks passed."),
            200: OpenApiResponse(RoundOutput, description="A retry: the round this Idempotency-Key already requested."),
            409: OpenApiResponse(
                ErrorSerializer,
                description="`governance_check_failed` or `budget_exceeded` (the round is blocked; details carry the "
                "report and the round), or `invalid_state` (a round of this plan is still live, the plan is stopped or complete).",
            ),
        },
    )
    def post(self, request, pk: int):
        plan = self.get_object()
        key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        round, created = round_request_once(actor=request.user, plan=plan, idempotency_key=key)
        round = rounds_for(user=request.user).get(pk=round.pk)
        if round.status == TrainingRound.Status.BLOCKED:
            raise blocked_error(round, RoundOutput(round, context=self.context_for([round])).data)
        if created:
            return self.output(
                RoundOutput, round, status_code=status.HTTP_201_CREATED, headers={"Location": f"/api/v1/rounds/{round.pk}/"}
            )
        return self.output(RoundOutput, round)


def blocked_error(round: TrainingRound, round_data: dict) -> Exception:
    """The 409 for a blocked round: budget_exceeded when the budget is the only failed check
    (with the first dataset over budget's figures), governance_check_failed otherwise."""
    report = round.governance_report or {}
    failed = [c for c in report.get("checks", []) if not c.get("passed")]
    if len(failed) == 1 and failed[0]["name"] == governance.BUDGET:
        datasets = failed[0].get("details", {}).get("datasets", {})
        over = [(slug, d) for slug, d in sorted(datasets.items()) if d["requested"] > d["remaining"]]
        if over:
            slug, figures = over[0]
            return BudgetExceeded(
                slug,
                figures["requested"],
                figures["remaining"],
                budget=figures["budget"],
                spent=figures["spent"],
                datasets=datasets,
                report=report,
                round=round_data,
            )
    return GovernanceCheckFailed(round.reason or "A governance check failed.", report=report, round=round_data)


class RoundObjectView(RoundViewMixin, ApiView):
    object_name = "Round"

    def object_queryset(self):
        return rounds_for(user=self.request.user).select_related("plan__agreement")

    def respond(self, round: TrainingRound):
        return self.output(RoundOutput, rounds_for(user=self.request.user).get(pk=round.pk))

    def deciding_organisation(self, round: TrainingRound, given: Organisation | None) -> Organisation:
        candidates = round_organisations(round=round)
        return acting_organisation(
            self.request.user, candidates=candidates, given=given, agreement=round.plan.agreement, action="decide on this round"
        )


class RoundDetailView(RoundObjectView):
    """A round: status, phase, governance report, approvals and metrics."""

    def object_queryset(self):
        return rounds_for(user=self.request.user)

    @extend_schema(operation_id="rounds_retrieve", responses=RoundOutput)
    def get(self, request, pk: int):
        return self.output(RoundOutput, self.get_object())


class RoundApproveView(RoundObjectView):
    """Approve the round for your organisation (a representative of an organisation whose
    dataset the round uses). The last approval needed starts the round."""

    required_scope = "approve"

    class InputSerializer(OrganisationChoice):
        class Meta:
            ref_name = "RoundApproveInput"

    @extend_schema(operation_id="rounds_approve", request=InputSerializer, responses=RoundOutput)
    def post(self, request, pk: int):
        round = self.get_object()
        data = self.validated_input(self.InputSerializer)
        round_approve(actor=request.user, round=round, organisation=self.deciding_organisation(round, data.get("organisation")))
        return self.respond(round)


class RoundRejectView(RoundObjectView):
    """Reject the round for your organisation, saying why. One rejection ends the round."""

    required_scope = "approve"

    class InputSerializer(OrganisationChoice):
        reason = serializers.CharField(max_length=2000, allow_blank=True, default="", trim_whitespace=False)

        class Meta:
            ref_name = "RoundRejectInput"

    @extend_schema(operation_id="rounds_reject", request=InputSerializer, responses=RoundOutput)
    def post(self, request, pk: int):
        round = self.get_object()
        data = self.validated_input(self.InputSerializer)
        organisation = self.deciding_organisation(round, data.get("organisation"))
        round_reject(actor=request.user, round=round, organisation=organisation, reason=data["reason"])
        return self.respond(round)


class ParticipantOutput(serializers.ModelSerializer):
    dataset_slug = serializers.CharField(source="dataset.slug")
    organisation = serializers.IntegerField(source="dataset.organisation_id")
    organisation_slug = serializers.CharField(source="dataset.organisation.slug")
    metrics = serializers.DictField()

    class Meta:
        model = RoundParticipant
        # refusal_*: why the partner's agent declined the round (empty when it did not)
        fields = ["dataset", "dataset_slug", "organisation", "organisation_slug", "status", "last_phase", "metrics", "refusal_code", "refusal_reason"]
        ref_name = "RoundParticipant"


class RoundParticipantsView(RoundObjectView):
    """The datasets taking part in the round, and how far each got."""

    queryset = RoundParticipant.objects.none()  # for the schema: the model the filters describe
    filterset_class = ParticipantFilter
    ordering_fields = ["dataset__slug", "status"]

    @extend_schema(operation_id="rounds_participants_list", responses=ParticipantOutput(many=True))
    def get(self, request, pk: int):
        round = self.get_object()
        return self.list_response(round_participants(round=round), ParticipantOutput)
