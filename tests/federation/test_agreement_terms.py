"""Issue 17 item 3: the agreement services refuse bad terms with every problem at once."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from federation.models import Agreement, GovernanceEvent
from federation.services.agreements import MAX_DELTA_CEILING, agreement_create, agreement_update_terms
from fedgov.errors import ValidationFailed
from tests.factories import terms


def test_every_broken_rule_is_reported_in_one_refusal_and_nothing_is_written(cast):
    before = Agreement.objects.count()
    with pytest.raises(ValidationFailed) as err:
        agreement_create(
            actor=cast.admin,
            parties=[cast.org_a],
            **terms(
                title="Wrong in six ways",
                valid_from=date.today(),
                valid_until=date.today() - timedelta(days=1),
                min_noise_multiplier=0,
                max_delta=0.5,
                max_epsilon_per_round=9.0,
                max_epsilon_budget=8.0,
                approval_rule=Agreement.ApprovalRule.QUORUM,
                approval_quorum=3,
            ),
        )
    fields = err.value.details["fields"]
    assert {"valid_until", "min_noise_multiplier", "max_delta", "max_epsilon_per_round", "parties", "approval_quorum",
            "min_participants"} <= set(fields)  # fmt: skip
    assert Agreement.objects.count() == before


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"max_delta": MAX_DELTA_CEILING * 2}, "max_delta"),
        ({"max_epsilon_per_round": 11.0, "max_epsilon_budget": 10.0}, "max_epsilon_per_round"),
        ({"min_participants": 1}, "min_participants"),
        ({"approval_rule": Agreement.ApprovalRule.QUORUM, "approval_quorum": 0}, "approval_quorum"),
    ],
)
def test_terms_the_old_rules_let_through_are_refused(cast, overrides, field):
    with pytest.raises(ValidationFailed) as err:
        agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(**overrides))
    assert field in err.value.details["fields"]


def test_a_delta_at_the_ceiling_is_accepted(cast):
    agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="At the ceiling", max_delta=MAX_DELTA_CEILING))


def test_a_draft_edit_is_recorded_with_what_changed(cast):
    draft = agreement_create(actor=cast.admin, parties=[cast.org_a, cast.org_b], **terms(title="Draft"))
    agreement_update_terms(actor=cast.admin, agreement=draft, parties=[cast.org_a, cast.org_b, cast.org_c], exit_notice_days=7)
    event = GovernanceEvent.objects.get(agreement=draft, kind=GovernanceEvent.Kind.AGREEMENT_EDITED)
    assert event.details["changed"] == ["exit_notice_days", "parties"]
    assert event.details["after"]["parties"] == ["org-a", "org-b", "org-c"]
