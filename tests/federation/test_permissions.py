"""The permission matrix: every service x every role.

Expected outcomes: "ok" (allowed), 403 (may see, may not act: PermissionDenied), 404 (has no
relation to the object: NotFound). Every case runs in a savepoint that is rolled back, so
each starts from the same federation, and a refused case is checked to have changed nothing.
"""

import pytest
from django.db import transaction

from federation.models import GovernanceEvent, Membership
from federation.services.agreements import (
    agreement_amend,
    agreement_assign_auditor,
    agreement_create,
    agreement_resume,
    agreement_sign,
    agreement_submit,
    agreement_suspend,
    agreement_terminate,
    agreement_update_terms,
    party_give_exit_notice,
)
from federation.services.datasets import dataset_raise_budget, dataset_register
from federation.services.organisations import membership_add, organisation_create
from federation.services.plans import plan_create
from federation.services.rounds import round_approve, round_reject, round_request, standing_approval_give
from fedgov.errors import NotFound, PermissionDenied
from tests.factories import BOUNDS, FEATURES, UserFactory, terms

pytestmark = pytest.mark.django_db

ROLES = ("admin", "rep_a", "rep_b", "auditor", "other_auditor", "agent_a", "outsider")


def _draft(c):
    a = agreement_create(actor=c.admin, parties=[c.org_a, c.org_b], **terms(title="Draft"))
    return a


def _awaiting(c):
    return agreement_submit(actor=c.admin, agreement=_draft(c))


def _round(c):
    return round_request(actor=c.admin, plan=c.plan)


# Each service: (callable(actor, cast, setup), setup(cast) run as admin before the actor acts,
# expected outcome per role).
ADMIN_ONLY = {"admin": "ok", "rep_a": 403, "rep_b": 403, "auditor": 403, "other_auditor": 403, "agent_a": 403, "outsider": 404}
# Acting for org A on the cast's agreement: rep_b and the assigned auditor can see the agreement
# but not act for A (403); an auditor of something else and an outsider cannot see it (404).
FOR_ORG_A = {"admin": 403, "rep_a": "ok", "rep_b": 403, "auditor": 403, "other_auditor": 404, "agent_a": 403, "outsider": 404}
FOR_ORG_A_OR_ADMIN = dict(FOR_ORG_A, admin="ok")

SERVICES = {
    "organisation_create": (lambda u, c, s: organisation_create(actor=u, slug="new-org", name="New"), None, ADMIN_ONLY),
    "membership_add": (
        lambda u, c, s: membership_add(actor=u, user=UserFactory(username="newbie"), organisation=c.org_a, role=Membership.Role.REPRESENTATIVE),
        None,
        ADMIN_ONLY,
    ),
    "agreement_create": (lambda u, c, s: agreement_create(actor=u, parties=[c.org_a, c.org_b], **terms(title="New")), None, ADMIN_ONLY),
    "agreement_update_terms": (lambda u, c, s: agreement_update_terms(actor=u, agreement=s, title="Renamed"), _draft, ADMIN_ONLY),
    "agreement_submit": (lambda u, c, s: agreement_submit(actor=u, agreement=s), _draft, ADMIN_ONLY),
    "agreement_amend": (lambda u, c, s: agreement_amend(actor=u, agreement=c.agreement, max_clip_norm=1.5), None, ADMIN_ONLY),
    "agreement_suspend": (lambda u, c, s: agreement_suspend(actor=u, agreement=c.agreement), None, ADMIN_ONLY),
    "agreement_resume": (
        lambda u, c, s: agreement_resume(actor=u, agreement=c.agreement),
        lambda c: agreement_suspend(actor=c.admin, agreement=c.agreement),
        ADMIN_ONLY,
    ),
    "agreement_terminate": (lambda u, c, s: agreement_terminate(actor=u, agreement=c.agreement), None, ADMIN_ONLY),
    "agreement_assign_auditor": (
        lambda u, c, s: agreement_assign_auditor(actor=u, agreement=c.agreement, auditor=c.other_auditor),
        None,
        ADMIN_ONLY,
    ),
    "agreement_sign": (
        lambda u, c, s: agreement_sign(actor=u, agreement=s, organisation=c.org_a, terms_hash=s.terms_hash),
        lambda c: agreement_amend(actor=c.admin, agreement=c.agreement, max_clip_norm=1.5),
        FOR_ORG_A,
    ),
    "party_give_exit_notice": (
        lambda u, c, s: party_give_exit_notice(actor=u, agreement=c.agreement, organisation=c.org_a),
        None,
        FOR_ORG_A,
    ),
    "dataset_register": (
        lambda u, c, s: dataset_register(
            actor=u, organisation=c.org_a, agreement=c.agreement, slug="a-extra", name="Extra", record_count=10,
            feature_names=list(FEATURES), label_name="outcome", label_classes=["no", "yes"], epsilon_budget=1.0, delta=1e-6,
            feature_bounds=[list(b) for b in BOUNDS],
        ),
        None,
        FOR_ORG_A_OR_ADMIN,
    ),
    "dataset_raise_budget": (lambda u, c, s: dataset_raise_budget(actor=u, dataset=c.dataset_a, epsilon_budget=9.0), None, FOR_ORG_A_OR_ADMIN),
    "plan_create": (
        lambda u, c, s: plan_create(
            actor=u, agreement=c.agreement, name="P2", purpose="model evaluation", datasets=c.datasets,
            model_spec={"kind": "logreg"}, noise_multiplier=1.1, clip_norm=1.0, rounds_total=3, batch_size=32, local_steps=5,
        ),
        None,
        ADMIN_ONLY,
    ),
    "round_request": (
        lambda u, c, s: round_request(actor=u, plan=c.plan),
        None,
        {"admin": "ok", "rep_a": "ok", "rep_b": "ok", "auditor": 403, "other_auditor": 404, "agent_a": 403, "outsider": 404},
    ),
    "round_approve": (lambda u, c, s: round_approve(actor=u, round=s, organisation=c.org_a), _round, FOR_ORG_A),
    "round_reject": (lambda u, c, s: round_reject(actor=u, round=s, organisation=c.org_a, reason="no"), _round, FOR_ORG_A),
    "standing_approval_give": (
        lambda u, c, s: standing_approval_give(actor=u, plan=c.plan, organisation=c.org_a, max_rounds=3),
        None,
        FOR_ORG_A,
    ),
}


def _table_counts():
    from django.apps import apps

    return {m._meta.label: m.objects.count() for m in apps.get_app_config("federation").get_models()}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_permission_matrix(cast, service):
    call, setup, expected = SERVICES[service]
    assert set(expected) == set(ROLES), f"{service}: every role needs an expected outcome"
    outcomes = {}
    for role in ROLES:
        actor = getattr(cast, role)
        with transaction.atomic():
            setup_value = setup(cast) if setup else None
            before = _table_counts()
            try:
                call(actor, cast, setup_value)
                outcomes[role] = "ok"
            except PermissionDenied:
                outcomes[role] = 403
            except NotFound:
                outcomes[role] = 404
            if outcomes[role] != "ok":
                assert _table_counts() == before, f"{service} refused for {role} but changed rows"
            transaction.set_rollback(True)
    assert outcomes == expected


def test_anonymous_user_cannot_act(cast):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(NotFound):
        agreement_create(actor=AnonymousUser(), parties=[cast.org_a, cast.org_b], **terms())
    with pytest.raises(NotFound):
        round_approve(actor=AnonymousUser(), round=round_request(actor=cast.admin, plan=cast.plan), organisation=cast.org_a)
    assert not GovernanceEvent.objects.filter(kind="round_approved").exists()
