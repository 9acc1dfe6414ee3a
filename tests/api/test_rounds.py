"""Requesting, approving and rejecting rounds through the API: the governance report in the
answer, the stable error codes, and the Idempotency-Key."""

from __future__ import annotations

from datetime import UTC

import pytest

from federation import governance
from federation.models import TrainingRound
from federation.services.agreements import agreement_suspend
from federation.services.approvals import MSG_ALREADY_DECIDED
from federation.services.rounds import MSG_REASON_REQUIRED, MSG_ROUND_LIVE
from federation.services.tokens import token_issue
from tests.api.conftest import ALL_SCOPES
from tests.factories import build_cast
from tests.tamper import force_update


def client_for(user, scopes=ALL_SCOPES):
    from rest_framework.test import APIClient

    _, key = token_issue(actor=user, user=user, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def rounds_url(plan) -> str:
    return f"/api/v1/plans/{plan.pk}/rounds/"


def test_requesting_a_round_returns_it_with_its_governance_report(cast):
    response = client_for(cast.admin).post(rounds_url(cast.plan))
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == TrainingRound.Status.AWAITING_APPROVAL
    assert body["number"] == 1
    assert body["participant_count"] == 3
    assert response["Location"] == f"/api/v1/rounds/{body['id']}/"
    report = body["governance_report"]
    assert report["passed"] is True and report["stage"] == governance.STAGE_REQUEST
    assert {c["name"] for c in report["checks"]} >= {governance.AGREEMENT_ACTIVE, governance.BUDGET, governance.DP_PARAMETERS}


def test_a_retried_request_with_the_same_idempotency_key_returns_the_same_round(cast):
    client = client_for(cast.rep_a)
    first = client.post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="7b0c1c1e-retry")
    again = client.post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="7b0c1c1e-retry")
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert TrainingRound.objects.filter(plan=cast.plan).count() == 1


def test_a_second_request_without_a_key_is_refused_while_a_round_is_live(cast):
    client = client_for(cast.admin)
    assert client.post(rounds_url(cast.plan)).status_code == 201
    response = client.post(rounds_url(cast.plan))
    assert response.status_code == 409
    assert response.json()["code"] == "invalid_state"
    assert response.json()["message"] == MSG_ROUND_LIVE.format(number=1, plan=cast.plan.name, status="awaiting approval")
    assert TrainingRound.objects.filter(plan=cast.plan).count() == 1


def test_a_different_key_does_not_return_another_requests_round(cast):
    client = client_for(cast.admin)
    assert client.post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="one").status_code == 201
    response = client.post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="two")
    assert response.status_code == 409 and response.json()["code"] == "invalid_state"


def test_an_idempotency_key_longer_than_128_characters_is_refused(cast):
    response = client_for(cast.admin).post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="k" * 129)
    assert response.status_code == 400
    assert response.json()["code"] == "validation_failed"
    assert "idempotency_key" in response.json()["details"]["fields"]
    assert not TrainingRound.objects.exists()


def test_a_blocked_round_answers_governance_check_failed_with_the_report(cast):
    agreement_suspend(actor=cast.admin, agreement=cast.agreement, reason="audit pending")
    client = client_for(cast.admin)
    response = client.post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="blocked-1")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "governance_check_failed"
    report = body["details"]["report"]
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    assert governance.AGREEMENT_ACTIVE in failed
    assert body["details"]["round"]["status"] == TrainingRound.Status.BLOCKED
    assert body["message"] == TrainingRound.objects.get().reason
    # A retry answers the same: the same blocked round, no second one.
    again = client.post(rounds_url(cast.plan), HTTP_IDEMPOTENCY_KEY="blocked-1")
    assert again.status_code == 409
    assert again.json()["details"]["round"]["id"] == body["details"]["round"]["id"]
    assert TrainingRound.objects.count() == 1


@pytest.mark.django_db
def test_an_exhausted_budget_answers_budget_exceeded_with_requested_and_remaining():
    cast = build_cast(budget=0.05)
    response = client_for(cast.admin).post(rounds_url(cast.plan))
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "budget_exceeded"
    details = body["details"]
    assert details["requested"] > details["remaining"]
    assert details["remaining"] == pytest.approx(0.05)
    assert details["dataset"] in {d.slug for d in cast.datasets}
    assert set(details["datasets"]) == {d.slug for d in cast.datasets}
    assert details["report"]["passed"] is False
    assert details["round"]["status"] == TrainingRound.Status.BLOCKED


def test_approvals_from_every_party_approve_the_round(cast):
    round_id = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    for rep in (cast.rep_a, cast.rep_b):
        response = client_for(rep).post(f"/api/v1/rounds/{round_id}/approve/", {}, format="json")
        assert response.status_code == 200
        assert response.json()["status"] == TrainingRound.Status.AWAITING_APPROVAL
    response = client_for(cast.rep_c).post(f"/api/v1/rounds/{round_id}/approve/", {"organisation": cast.org_c.pk}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == TrainingRound.Status.APPROVED
    assert [a["organisation_slug"] for a in response.json()["approvals"]] == ["org-a", "org-b", "org-c"]


def test_approving_twice_is_an_invalid_state(cast):
    round_id = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    client = client_for(cast.rep_a)
    client.post(f"/api/v1/rounds/{round_id}/approve/", {}, format="json")
    response = client.post(f"/api/v1/rounds/{round_id}/approve/", {}, format="json")
    assert response.status_code == 409
    assert response.json() == {
        "code": "invalid_state",
        "message": MSG_ALREADY_DECIDED.format(organisation="Org A", decision="approve", number=1),
        "details": {},
    }


def test_approving_for_an_organisation_you_do_not_represent_is_forbidden(cast):
    round_id = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    response = client_for(cast.rep_a).post(f"/api/v1/rounds/{round_id}/approve/", {"organisation": cast.org_b.pk}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_a_rejection_needs_a_reason_and_ends_the_round(cast):
    round_id = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    client = client_for(cast.rep_b)
    response = client.post(f"/api/v1/rounds/{round_id}/reject/", {"reason": "  "}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_failed"
    assert response.json()["message"] == MSG_REASON_REQUIRED
    response = client.post(f"/api/v1/rounds/{round_id}/reject/", {"reason": "Data refresh first."}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == TrainingRound.Status.REJECTED
    assert "Data refresh first." in response.json()["reason"]


def test_round_participants_and_status_are_readable_by_the_parties(cast):
    round_id = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    client = client_for(cast.rep_b, scopes=["read"])
    detail = client.get(f"/api/v1/rounds/{round_id}/")
    assert detail.status_code == 200
    assert set(detail.json()) >= {"status", "phase", "metrics", "governance_report", "approvals"}
    participants = client.get(f"/api/v1/rounds/{round_id}/participants/", {"organisation": cast.org_b.pk})
    assert participants.status_code == 200
    assert [p["dataset_slug"] for p in participants.json()["results"]] == ["org-b-records"]


def test_the_round_outputs_fast_paths_render_what_their_declared_fields_do(cast):
    """RoundOutput and ApprovalOutput render through their declared fields (no hand-written
    dicts beside them, #18): DRF's rendering of those fields is what they answer, key for key."""
    from django.utils import timezone
    from rest_framework import serializers

    from federation.api.rounds import ApprovalOutput, RoundOutput
    from federation.selectors.rounds import round_context, rounds_for

    waiting = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    client_for(cast.rep_a).post(f"/api/v1/rounds/{waiting}/approve/", {}, format="json")
    client_for(cast.rep_b).post(f"/api/v1/rounds/{waiting}/reject/", {"reason": "Not yet."}, format="json")
    now = timezone.now()
    force_update(
        TrainingRound, waiting, phase="training", phase_deadline=now, started_at=now, finished_at=now, metrics={"loss": 0.5, "per_party": {"a": 1}}
    )
    bare = TrainingRound.objects.create(plan=cast.plan, number=99, governance_report={}, metrics={})
    rounds = list(rounds_for(user=cast.admin).filter(pk__in=[waiting, bare.pk]).order_by("pk"))
    context = round_context(rounds=rounds)
    approvals = [a for page in context["approvals"].values() for a in page]
    assert len(approvals) == 2 and rounds[1].requested_by_username is None
    for round in rounds:
        output = RoundOutput(round, context=context)
        assert list(output.data.items()) == list(serializers.Serializer.to_representation(output, round).items())
    for approval in approvals:
        output = ApprovalOutput(approval)
        assert list(output.data.items()) == list(serializers.Serializer.to_representation(output, approval).items())


def _iso(value) -> str | None:
    """A timestamp as the API has always written it: ISO 8601 in UTC with a `Z`."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_the_round_json_keeps_its_keys_their_order_and_their_values(cast):
    """The round's JSON, key for key and in order, as the API wrote it before the serializers
    produced it (#18): every field's value and format, with and without approvals, metrics,
    an interval, a requester and timestamps."""
    from datetime import timedelta

    from django.utils import timezone

    from federation.models import RoundApproval, RoundParticipant

    waiting = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    client_for(cast.rep_a).post(f"/api/v1/rounds/{waiting}/approve/", {}, format="json")
    client_for(cast.rep_b).post(f"/api/v1/rounds/{waiting}/reject/", {"reason": "Not yet."}, format="json")
    now = timezone.now().replace(microsecond=123456)
    metrics = {"loss": 0.5, "accuracy": 0.75, "accuracy_interval": [0.5, 1], "per_party": {"a": 1}, "none": None}
    force_update(
        TrainingRound, waiting, phase="training", phase_deadline=now + timedelta(seconds=30), started_at=now, finished_at=now, metrics=metrics
    )
    bare = TrainingRound.objects.create(plan=cast.plan, number=99, governance_report={}, metrics={})
    reader = client_for(cast.auditor, ["read"])
    for round in TrainingRound.objects.filter(pk__in=[waiting, bare.pk]).select_related("requested_by"):
        approvals = sorted(RoundApproval.objects.filter(round=round).select_related("organisation"), key=lambda a: (a.decided_at, a.pk))
        expected = {
            "id": round.pk,
            "plan": round.plan_id,
            "number": round.number,
            "status": round.status,
            "phase": round.phase,
            "phase_deadline": _iso(round.phase_deadline),
            "reason": round.reason,
            "governance_report": round.governance_report or None,
            "metrics": round.metrics,
            "accuracy_interval": [0.5, 1.0] if round.pk == waiting else None,
            "approvals": [
                {
                    "organisation": a.organisation_id,
                    "organisation_slug": a.organisation.slug,
                    "decision": a.decision,
                    "reason": a.reason,
                    "decided_at": _iso(a.decided_at),
                    "standing": a.standing_approval_id is not None,
                }
                for a in approvals
            ],
            "participant_count": RoundParticipant.objects.filter(round=round).count(),
            "requested_by": round.requested_by.username if round.requested_by else None,
            "requested_at": _iso(round.requested_at),
            "started_at": _iso(round.started_at),
            "finished_at": _iso(round.finished_at),
        }
        detail = reader.get(f"/api/v1/rounds/{round.pk}/")
        assert detail.status_code == 200
        assert list(detail.json().items()) == list(expected.items())
        listed = reader.get("/api/v1/rounds/", {"plan": cast.plan.pk}).json()["results"]
        assert [list(r.items()) for r in listed if r["id"] == round.pk] == [list(expected.items())]
    waiting_json = reader.get(f"/api/v1/rounds/{waiting}/").json()
    assert waiting_json["phase_deadline"].endswith(".123456Z") and len(waiting_json["approvals"]) == 2
    assert isinstance(waiting_json["accuracy_interval"][1], float)


def test_the_round_api_returns_the_accuracy_interval(cast):
    round_id = client_for(cast.admin).post(rounds_url(cast.plan)).json()["id"]
    client = client_for(cast.rep_b, scopes=["read"])
    assert client.get(f"/api/v1/rounds/{round_id}/").json()["accuracy_interval"] is None
    force_update(TrainingRound, round_id, metrics={"accuracy": 0.81, "accuracy_interval": [0.74, 0.88]})
    body = client.get(f"/api/v1/rounds/{round_id}/").json()
    assert body["accuracy_interval"] == [0.74, 0.88] and body["metrics"]["accuracy"] == 0.81
