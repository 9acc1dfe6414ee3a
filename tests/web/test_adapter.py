"""The web UI's one adapter from a service refusal to the page (`federation.web.base.attempt`):
a refusal naming a field lands on that field, one naming none becomes a message (and a redirect
when the view gives one), guard refusals stay 404/403, and a refusal writes nothing."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.test import RequestFactory
from django.urls import reverse

from accounting.models import LedgerEntry
from federation import forms
from federation.models import Agreement, Dataset, GovernanceEvent
from federation.services.agreements import agreement_submit
from federation.services.datasets import MSG_BUDGET_LOWERED, dataset_raise_budget
from federation.web.base import attempt
from fedgov.errors import PermissionDenied


def _request(user):
    request = RequestFactory().post("/")
    SessionMiddleware(lambda r: None).process_request(request)
    MessageMiddleware(lambda r: None).process_request(request)
    request.user = user
    return request


def _written() -> tuple:
    return (
        LedgerEntry.objects.count(),
        GovernanceEvent.objects.count(),
        list(Dataset.objects.order_by("pk").values_list("epsilon_budget", flat=True)),
        list(Agreement.objects.order_by("pk").values_list("status", "version", "terms_hash")),
    )


@pytest.mark.django_db
def test_a_refusal_naming_a_field_lands_on_that_field_and_writes_nothing(cast):
    request = _request(cast.admin)
    form = forms.RaiseBudgetForm({"epsilon_budget": "1"})
    assert form.is_valid()
    before = _written()
    done = attempt(
        request, dataset_raise_budget, form=form, back="/elsewhere/", actor=cast.admin, dataset=cast.dataset_a, epsilon_budget=1.0
    )
    assert not done.ok and done.response is None and done.value is None
    assert done.refusal.code == "validation_failed"
    assert form.errors["epsilon_budget"] == [MSG_BUDGET_LOWERED.format(current=8.0)]
    assert not form.non_field_errors()
    assert list(get_messages(request)) == []  # on the field, not as a message
    assert _written() == before


@pytest.mark.django_db
def test_a_refusal_naming_no_field_becomes_a_message_and_the_redirect(cast):
    request = _request(cast.admin)
    before = _written()
    done = attempt(request, agreement_submit, back="/agreements/back/", actor=cast.admin, agreement=cast.agreement)
    assert not done.ok and done.refusal.code == "invalid_state"
    assert done.response.status_code == 302 and done.response["Location"] == "/agreements/back/"
    assert [m.message for m in get_messages(request)] == [done.refusal.message]
    assert "not a draft" in done.refusal.message
    assert _written() == before


@pytest.mark.django_db
def test_a_refusal_naming_no_field_without_a_redirect_lands_at_the_top_of_the_form(cast):
    request = _request(cast.admin)
    form = forms.ReasonForm({"reason": "why not"})
    assert form.is_valid()
    done = attempt(request, agreement_submit, form=form, actor=cast.admin, agreement=cast.agreement)
    assert not done.ok and done.response is None
    assert form.non_field_errors() == [done.refusal.message]
    assert list(get_messages(request)) == []


@pytest.mark.django_db
def test_a_guard_refusal_stays_a_403_unless_the_view_names_the_field_it_guards(cast):
    before = _written()
    form = forms.RaiseBudgetForm({"epsilon_budget": "9"})
    assert form.is_valid()
    with pytest.raises(PermissionDenied):
        attempt(_request(cast.rep_b), dataset_raise_budget, form=form, actor=cast.rep_b, dataset=cast.dataset_a, epsilon_budget=9.0)
    done = attempt(
        _request(cast.rep_b),
        dataset_raise_budget,
        form=form,
        guard_field="epsilon_budget",
        actor=cast.rep_b,
        dataset=cast.dataset_a,
        epsilon_budget=9.0,
    )
    assert done.refusal.code == "permission_denied" and form.errors["epsilon_budget"] == [done.refusal.message]
    assert _written() == before


@pytest.mark.django_db
def test_success_returns_the_services_result(cast):
    done = attempt(_request(cast.admin), dataset_raise_budget, actor=cast.admin, dataset=cast.dataset_a, epsilon_budget=9.0)
    assert done.ok and done.refusal is None and done.response is None
    assert done.value.pk == cast.dataset_a.pk and done.value.epsilon_budget == 9.0


@pytest.mark.django_db
def test_through_a_page_the_field_error_shows_next_to_the_field_and_the_state_error_as_a_message(cast, as_user):
    client = as_user(cast.admin)
    before = _written()
    response = client.post(reverse("web:dataset_raise_budget", args=[cast.dataset_a.slug]), {"epsilon_budget": "1"})
    assert response.status_code == 400
    assert response.context["budget_form"].errors["epsilon_budget"] == [MSG_BUDGET_LOWERED.format(current=8.0)]
    response = client.post(reverse("web:agreement_submit", args=[cast.agreement.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("web:agreement_detail", args=[cast.agreement.pk])
    assert any("not a draft" in m.message for m in response.context["messages"])
    assert _written() == before
