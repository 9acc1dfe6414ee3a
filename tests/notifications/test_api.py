"""The notifications API and pages: your own inbox only, read/unread, preferences, and the
webhooks of the organisations you represent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from federation.models import ApiToken
from federation.services.rounds import round_request
from federation.services.tokens import token_issue
from notifications.models import Delivery, Kind, Notification, NotificationPreference, Webhook

pytestmark = pytest.mark.django_db


def client_for(user, scopes=(ApiToken.Scope.READ, ApiToken.Scope.APPROVE)) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(actor=user, user=user, scopes=list(scopes))[1]}")
    return client


def note(user, title, *, minutes_ago=0, read=False) -> Notification:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    return Notification.objects.create(
        recipient=user, kind=Kind.ROUND_COMPLETED, title=title, subject_key=f"test:{title}", created_at=at,
        read_at=at if read else None,
    )


def test_the_inbox_lists_your_own_notifications_newest_first_and_filters_unread(cast):
    note(cast.rep_a, "old", minutes_ago=30, read=True)
    note(cast.rep_a, "new", minutes_ago=1)
    note(cast.rep_a, "middle", minutes_ago=10)
    note(cast.rep_b, "not yours")
    api = client_for(cast.rep_a)
    answer = api.get("/api/v1/notifications/")
    assert answer.status_code == 200
    assert [n["title"] for n in answer.json()["results"]] == ["new", "middle", "old"]
    unread = api.get("/api/v1/notifications/?unread=true").json()["results"]
    assert [n["title"] for n in unread] == ["new", "middle"] and not any(n["read"] for n in unread)
    assert [n["title"] for n in api.get("/api/v1/notifications/?unread=false").json()["results"]] == ["old"]
    bad = api.get("/api/v1/notifications/?unread=maybe")
    assert bad.status_code == 400


def test_marking_read_is_yours_only_and_read_all_marks_the_rest(cast):
    mine, theirs = note(cast.rep_a, "mine"), note(cast.rep_b, "theirs")
    note(cast.rep_a, "another")
    api = client_for(cast.rep_a)
    assert api.post(f"/api/v1/notifications/{theirs.pk}/read/").status_code == 404
    assert Notification.objects.get(pk=theirs.pk).read_at is None
    answer = api.post(f"/api/v1/notifications/{mine.pk}/read/")
    assert answer.status_code == 200 and answer.json()["read"] is True
    first_read = Notification.objects.get(pk=mine.pk).read_at
    assert api.post(f"/api/v1/notifications/{mine.pk}/read/").json()["read_at"] == answer.json()["read_at"]
    assert api.post("/api/v1/notifications/read-all/").json() == {"marked": 1}
    assert not Notification.objects.filter(recipient=cast.rep_a, read_at__isnull=True).exists()
    assert Notification.objects.get(pk=mine.pk).read_at == first_read
    assert Notification.objects.get(pk=theirs.pk).read_at is None


def test_preferences_default_to_everything_and_change_per_kind(cast):
    api = client_for(cast.rep_a)
    prefs = api.get("/api/v1/notification-preferences/").json()
    assert {p["kind"] for p in prefs} == set(Kind.values) and all(p["in_app"] and p["email"] for p in prefs)
    answer = api.put("/api/v1/notification-preferences/", {"preferences": [{"kind": "approval_waiting", "email": False}]}, format="json")
    assert answer.status_code == 200
    changed = {p["kind"]: p for p in answer.json()}["approval_waiting"]
    assert changed["email"] is False and changed["in_app"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"preferences": [{"kind": "nonsense", "email": False}]},
        {"preferences": [{"kind": "approval_waiting", "email": "no"}]},
        {"preferences": "approval_waiting"},
        {"preferences": []},
        {},
    ],
)
def test_bad_preferences_are_refused_and_write_nothing(cast, body):
    answer = client_for(cast.rep_a).put("/api/v1/notification-preferences/", body, format="json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["code"] in ("validation_failed", "invalid")
    assert not NotificationPreference.objects.exists()


def test_a_representative_creates_a_webhook_and_sees_its_secret_once(cast):
    api = client_for(cast.rep_a)
    created = api.post(f"/api/v1/organisations/{cast.org_a.pk}/webhooks/", {"url": "https://hooks.example.org/a"}, format="json")
    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    assert len(secret) == 64 and Webhook.objects.get().secret == secret
    listed = api.get(f"/api/v1/organisations/{cast.org_a.pk}/webhooks/").json()["results"]
    assert [w["url"] for w in listed] == ["https://hooks.example.org/a"] and "secret" not in listed[0]
    assert "secret" not in api.get(f"/api/v1/webhooks/{created.json()['id']}/").json()


@pytest.mark.parametrize(
    "body",
    [{"url": "ftp://hooks.example.org/a"}, {"url": "not a url"}, {"url": "https://hooks.example.org/a", "kinds": ["nonsense"]}, {}],
)
def test_bad_webhooks_are_refused_and_write_nothing(cast, body):
    answer = client_for(cast.rep_a).post(f"/api/v1/organisations/{cast.org_a.pk}/webhooks/", body, format="json")
    assert answer.status_code == 400, answer.content
    assert not Webhook.objects.exists()


def test_a_read_only_token_cannot_add_a_webhook(cast):
    api = client_for(cast.rep_a, scopes=(ApiToken.Scope.READ,))
    answer = api.post(f"/api/v1/organisations/{cast.org_a.pk}/webhooks/", {"url": "https://hooks.example.org/a"}, format="json")
    assert answer.status_code == 403 and not Webhook.objects.exists()


def test_deactivating_a_webhook_cancels_what_it_had_pending_and_keeps_its_log(cast):
    hook = Webhook.objects.create(organisation=cast.org_a, url="https://hooks.example.org/a", secret="s")
    round_request(actor=cast.admin, plan=cast.plan)
    api = client_for(cast.rep_a)
    [delivery] = api.get(f"/api/v1/webhooks/{hook.pk}/deliveries/").json()["results"]
    assert delivery["status"] == "pending" and delivery["kind"] == "approval_waiting"
    assert client_for(cast.rep_b).delete(f"/api/v1/webhooks/{hook.pk}/").status_code == 403
    answer = api.delete(f"/api/v1/webhooks/{hook.pk}/")
    assert answer.status_code == 200 and answer.json()["active"] is False
    assert Delivery.objects.get(webhook=hook).status == Delivery.Status.CANCELLED


def test_the_notifications_page_shows_your_inbox_and_the_unread_count(cast, client):
    round_request(actor=cast.admin, plan=cast.plan)
    client.force_login(cast.rep_a)
    page = client.get("/notifications/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "waits for your approval" in html and 'aria-label="1 unread"' in html
    n = Notification.objects.get(recipient=cast.rep_a)
    opened = client.post(f"/notifications/{n.pk}/read/", {"open": "1"})
    assert opened.status_code == 302 and opened["Location"] == n.link
    assert Notification.objects.get(pk=n.pk).read_at is not None
    assert 'unread"' not in client.get("/").content.decode().split("Notifications", 1)[1][:80]
    other = Notification.objects.get(recipient=cast.rep_b)
    assert client.post(f"/notifications/{other.pk}/read/").status_code == 404


def test_the_preferences_form_saves_each_kinds_channels(cast, client):
    client.force_login(cast.rep_a)
    assert client.get("/notifications/preferences/").status_code == 200
    answer = client.post("/notifications/preferences/", {"approval_waiting-in_app": "on", "round_completed-email": "on"})
    assert answer.status_code == 302
    prefs = {p.kind: (p.in_app, p.email) for p in NotificationPreference.objects.filter(user=cast.rep_a)}
    assert prefs["approval_waiting"] == (True, False) and prefs["round_completed"] == (False, True)
    assert prefs["budget_80"] == (False, False)
