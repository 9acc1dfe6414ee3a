"""`services.organisations.member_register`: a new person's account and membership in one
transaction, for administrators only."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from federation.models import Membership
from federation.services.organisations import member_register
from fedgov.errors import PermissionDenied, ValidationFailed

User = get_user_model()


def _state():
    return User.objects.count(), Membership.objects.count()


@pytest.mark.django_db
def test_an_administrator_registers_a_new_person_and_their_role(cast):
    membership = member_register(
        actor=cast.admin, organisation=cast.org_a, role=Membership.Role.REPRESENTATIVE, username="newbie", password="pw-long-enough"
    )
    assert membership.user.username == "newbie" and membership.user.check_password("pw-long-enough")
    assert membership.organisation == cast.org_a and membership.role == Membership.Role.REPRESENTATIVE


@pytest.mark.django_db
def test_a_refused_membership_leaves_no_account_behind(cast):
    before = _state()
    with pytest.raises(ValidationFailed):
        member_register(actor=cast.admin, organisation=cast.org_a, role="overlord", username="newbie", password="pw-long-enough")
    assert _state() == before and not User.objects.filter(username="newbie").exists()


@pytest.mark.django_db
def test_only_an_administrator_registers_people(cast):
    before = _state()
    with pytest.raises(PermissionDenied):
        member_register(
            actor=cast.rep_a, organisation=cast.org_a, role=Membership.Role.AGENT, username="newbie", password="pw-long-enough"
        )
    assert _state() == before
