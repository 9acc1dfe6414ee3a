"""Who may call what: a role x endpoint table, checked against the URL configuration itself.

The set of (route, method) pairs is discovered by walking Django's resolver under /api/v1/;
`test_every_api_route_has_a_row` fails when an endpoint is added without a row here, so no
endpoint ships without its permission rules written down.

Columns (tests/api/conftest.py ROLES): administrator; representative of the owning
organisation (Org A, whose dataset, membership and token the URLs name; a party to every
agreement); representative of another party (Org B); the agreement's auditor; an auditor not
assigned to it; Org A's partner agent (a member without the representative role); an
authenticated outsider (no membership); anonymous. Every authenticated role uses a token with
the read, trigger and approve scopes, so the table shows roles, not scopes
(test_scopes.py covers those).

Each request runs in a savepoint that is rolled back, so every role meets the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver

from notifications.models import Notification, Webhook
from tests.api.conftest import ROLES, World

API_PREFIX = "api/v1/"
SKIPPED_METHODS = {"OPTIONS", "HEAD"}


def discover_api_routes() -> set[tuple[str, str]]:
    """(route under /api/v1/, HTTP method) for every view the URL configuration serves."""
    found: set[tuple[str, str]] = set()

    def walk(patterns, prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
                continue
            assert isinstance(p, URLPattern)
            if not route.startswith(API_PREFIX):
                continue
            route = route[len(API_PREFIX) :]
            # The partner agent's routes (/api/v1/agent/, names "agent-*") have their own
            # matrix with the agent API (the lead's tests/api/test_agent*.py); skip them here.
            if route.startswith("agent/") or (p.name or "").startswith("agent-"):
                continue
            view_class = getattr(p.callback, "cls", None) or getattr(p.callback, "view_class", None)
            assert view_class is not None, f"{route}: not a class-based view"
            for method in view_class.http_method_names:
                if method.upper() not in SKIPPED_METHODS and hasattr(view_class, method):
                    found.add((route, method.upper()))

    walk(get_resolver().url_patterns, "")
    return found


@dataclass(frozen=True)
class Row:
    expect: tuple  # one status per role, in ROLES order
    obj: str | None = None  # the World object whose pk fills <int:pk>
    body: str | None = None  # name of a body builder below


def _bodies(w: World) -> dict:
    c = w.cast
    today = date.today()
    return {
        "obtain_token": {"username": "rep-a", "password": "pw", "scopes": ["read"]},
        "token": {"scopes": ["read"], "name": "matrix"},
        "organisation": {"slug": "org-new", "name": "Org New", "kind": "bank"},
        "membership": {"user": "outsider", "organisation": c.org_c.pk, "role": "representative"},
        "agreement": {
            "title": "New terms",
            "purposes": ["diabetes risk research"],
            "valid_from": str(today),
            "valid_until": str(today + timedelta(days=90)),
            "min_noise_multiplier": 0.8,
            "max_clip_norm": 2.0,
            "max_delta": 1e-5,
            "max_epsilon_per_round": 2.0,
            "max_epsilon_budget": 10.0,
            "parties": [c.org_a.pk, c.org_b.pk],
        },
        "sign": {"terms_hash": w.pending_agreement.terms_hash},
        "amend": {"title": "Amended terms"},
        "empty": {},
        "pause": {"reason": "matrix"},
        "retry_policy": {"retry_backoff_seconds": 5},
        "dataset": {
            "organisation": c.org_a.pk,
            "agreement": c.agreement.pk,
            "slug": "org-a-extra",
            "name": "Extra",
            "record_count": 100,
            "feature_names": ["age", "bmi", "glucose"],
            "label_name": "outcome",
            "label_classes": ["no", "yes"],
            "feature_bounds": [[0, 120], [10, 60], [40, 400]],
            "epsilon_budget": 5.0,
            "delta": 1e-5,
        },
        "raise_budget": {"epsilon_budget": 9.0},
        "plan": {
            "agreement": c.agreement.pk,
            "name": "Another plan",
            "purpose": "diabetes risk research",
            "datasets": [d.pk for d in c.datasets],
            "model_spec": {"kind": "logreg"},
            "rounds_total": 3,
            # Every value of the schedule given: no planner (its defaults: test_plan_definition).
            "noise_multiplier": 1.1,
            "clip_norm": 1.0,
            "batch_size": 32,
            "sampling_rate": None,
            "local_steps": 5,
            "learning_rate": 0.5,
            "momentum": 0.0,
            "server_learning_rate": 1.0,
            "server_optimizer": {},
            "eval_noise_multiplier": None,
        },
        "propose": {"agreement": c.agreement.pk, "datasets": [d.pk for d in c.datasets], "rounds_total": 3},
        "reject": {"reason": "Not this quarter."},
        "preferences": {"preferences": [{"kind": "approval_waiting", "email": False}]},
        "webhook": {"url": "https://hooks.example.org/fedgov"},
    }


def _with_a_second_representative(w: World):
    """rep-a's membership, with a second representative of Org A beside it: removing Org A's
    last one is refused (409 last_representative) whoever asks, hiding the permission answer."""
    from federation.models import Membership
    from tests.factories import UserFactory

    Membership.objects.create(user=UserFactory(), organisation=w.cast.org_a, role=Membership.Role.REPRESENTATIVE)
    return w.membership


def _objects(w: World) -> dict:
    return {
        "spare_token": w.spare_token,
        "org_a": w.cast.org_a,
        "membership": _with_a_second_representative(w),
        "agreement": w.cast.agreement,
        "draft_agreement": w.draft_agreement,
        "pending_agreement": w.pending_agreement,
        "dataset_a": w.cast.dataset_a,
        "plan": w.cast.plan,
        "idle_plan": w.idle_plan,
        "round": w.round,
        "model_version": w.model_version,
        # notifications: rep A's "approval waiting" for the world's round, and a webhook of org A.
        "notification": Notification.objects.get(recipient=w.cast.rep_a, kind="approval_waiting"),
        "webhook": Webhook.objects.get_or_create(organisation=w.cast.org_a, url="https://hooks.example.org/a", secret="s")[0],
    }


#                 admin  rep_own rep_oth auditor other_a agent  outsider anon
ALL_READ = (200, 200, 200, 200, 200, 200, 200, 401)
PARTY_READ = (200, 200, 200, 200, 404, 200, 404, 401)  # whoever sees the agreement
LEDGER_READ = (200, 200, 403, 200, 404, 403, 404, 401)  # admins, owning reps, its auditors
ADMIN_CREATE = (201, 403, 403, 403, 403, 403, 404, 401)  # require_administrator, before the body
ADMIN_ACTION = (200, 403, 403, 403, 404, 403, 404, 401)  # on an object the role may or may not see
REP_DECISION = (403, 200, 200, 403, 404, 403, 404, 401)  # a representative of a party concerned
WEBHOOK_MANAGE = (200, 200, 403, 403, 404, 403, 404, 401)  # admins and the organisation's representatives

TABLE: dict[tuple[str, str], Row] = {
    ("", "GET"): Row((200, 200, 200, 200, 200, 200, 200, 200)),  # the index names URLs, never data
    ("health/", "GET"): Row((200, 200, 200, 200, 200, 200, 200, 200)),
    ("auth/token/", "POST"): Row((201, 201, 201, 201, 201, 201, 201, 201), body="obtain_token"),
    ("tokens/", "GET"): Row(ALL_READ),
    ("tokens/", "POST"): Row((201, 201, 201, 201, 201, 201, 201, 401), body="token"),
    ("tokens/<int:pk>/revoke/", "POST"): Row((200, 200, 404, 404, 404, 404, 404, 401), obj="spare_token"),
    ("organisations/", "GET"): Row(ALL_READ),
    ("organisations/", "POST"): Row(ADMIN_CREATE, body="organisation"),
    ("organisations/<int:pk>/", "GET"): Row(PARTY_READ, obj="org_a"),
    ("memberships/", "GET"): Row(ALL_READ),
    ("memberships/", "POST"): Row(ADMIN_CREATE, body="membership"),
    ("memberships/<int:pk>/", "GET"): Row((200, 200, 404, 404, 404, 404, 404, 401), obj="membership"),
    ("memberships/<int:pk>/", "DELETE"): Row((204, 403, 404, 404, 404, 404, 404, 401), obj="membership"),
    # Everyone may list; the list holds the agents the role may see (administrators: all;
    # representatives: their own organisations'; others: none).
    ("agents/", "GET"): Row(ALL_READ),
    ("agents/<int:pk>/", "GET"): Row((200, 200, 403, 403, 404, 403, 404, 401), obj="org_a"),
    ("agreements/", "GET"): Row(ALL_READ),
    ("agreements/", "POST"): Row(ADMIN_CREATE, body="agreement"),
    ("agreements/<int:pk>/", "GET"): Row(PARTY_READ, obj="agreement"),
    ("agreements/<int:pk>/submit/", "POST"): Row(ADMIN_ACTION, obj="draft_agreement"),
    ("agreements/<int:pk>/sign/", "POST"): Row(REP_DECISION, obj="pending_agreement", body="sign"),
    ("agreements/<int:pk>/amend/", "POST"): Row(ADMIN_ACTION, obj="agreement", body="amend"),
    ("agreements/<int:pk>/exit-notice/", "POST"): Row(REP_DECISION, obj="agreement", body="empty"),
    ("datasets/", "GET"): Row(ALL_READ),
    # Body references to objects the role cannot see read as "does not exist": 400, no leak.
    ("datasets/", "POST"): Row((201, 201, 403, 403, 400, 403, 400, 401), body="dataset"),
    ("datasets/<int:pk>/", "GET"): Row(PARTY_READ, obj="dataset_a"),
    ("datasets/<int:pk>/budget/", "GET"): Row(LEDGER_READ, obj="dataset_a"),
    ("datasets/<int:pk>/budget/", "POST"): Row((200, 200, 403, 403, 404, 403, 404, 401), obj="dataset_a", body="raise_budget"),
    ("datasets/<int:pk>/ledger/", "GET"): Row(LEDGER_READ, obj="dataset_a"),
    ("datasets/<int:pk>/ledger/verification/", "GET"): Row(LEDGER_READ, obj="dataset_a"),
    ("plans/", "GET"): Row(ALL_READ),
    ("plans/", "POST"): Row(ADMIN_CREATE, body="plan"),
    ("plans/propose/", "POST"): Row((200, 403, 403, 403, 403, 403, 404, 401), body="propose"),
    ("plans/<int:pk>/", "GET"): Row(PARTY_READ, obj="plan"),
    ("plans/<int:pk>/rounds/", "GET"): Row(PARTY_READ, obj="plan"),
    ("plans/<int:pk>/rounds/", "POST"): Row((201, 201, 201, 403, 404, 403, 404, 401), obj="idle_plan"),
    # Pause/resume/retry policy: an administrator or a representative of a party with a dataset
    # in the plan. The matrix's plan is active: resuming it is refused (409) after the check.
    ("plans/<int:pk>/pause/", "POST"): Row((200, 200, 200, 403, 404, 403, 404, 401), obj="plan", body="pause"),
    ("plans/<int:pk>/resume/", "POST"): Row((409, 409, 409, 403, 404, 403, 404, 401), obj="plan", body="empty"),
    ("plans/<int:pk>/retry-policy/", "POST"): Row((200, 200, 200, 403, 404, 403, 404, 401), obj="plan", body="retry_policy"),
    ("rounds/", "GET"): Row(ALL_READ),
    ("rounds/<int:pk>/", "GET"): Row(PARTY_READ, obj="round"),
    ("rounds/<int:pk>/participants/", "GET"): Row(PARTY_READ, obj="round"),
    ("rounds/<int:pk>/approve/", "POST"): Row(REP_DECISION, obj="round", body="empty"),
    ("rounds/<int:pk>/reject/", "POST"): Row(REP_DECISION, obj="round", body="reject"),
    ("events/", "GET"): Row(ALL_READ),
    ("model-versions/", "GET"): Row(ALL_READ),
    ("model-versions/<int:pk>/", "GET"): Row(PARTY_READ, obj="model_version"),
    # Parameters go to the parties only: not to administrators or auditors.
    ("model-versions/<int:pk>/params/", "GET"): Row((403, 200, 200, 403, 404, 200, 404, 401), obj="model_version"),
    # Notifications: everyone their own; an organisation's webhooks, its representatives and the administrators.
    ("notifications/", "GET"): Row(ALL_READ),
    ("notifications/read-all/", "POST"): Row(ALL_READ, body="empty"),
    ("notifications/<int:pk>/read/", "POST"): Row((404, 200, 404, 404, 404, 404, 404, 401), obj="notification", body="empty"),
    ("notification-preferences/", "GET"): Row(ALL_READ),
    ("notification-preferences/", "PUT"): Row(ALL_READ, body="preferences"),
    ("organisations/<int:pk>/webhooks/", "GET"): Row(WEBHOOK_MANAGE, obj="org_a"),
    ("organisations/<int:pk>/webhooks/", "POST"): Row((201, 201, 403, 403, 404, 403, 404, 401), obj="org_a", body="webhook"),
    ("webhooks/<int:pk>/", "GET"): Row(WEBHOOK_MANAGE, obj="webhook"),
    ("webhooks/<int:pk>/", "DELETE"): Row(WEBHOOK_MANAGE, obj="webhook"),
    ("webhooks/<int:pk>/deliveries/", "GET"): Row(WEBHOOK_MANAGE, obj="webhook"),
}


def test_every_api_route_has_a_row():
    discovered = discover_api_routes()
    assert discovered, "no API route discovered: is the resolver walk broken?"
    missing = sorted(discovered - TABLE.keys())
    stale = sorted(TABLE.keys() - discovered)
    assert not missing, f"endpoints without a row in the permission table: {missing}"
    assert not stale, f"rows for endpoints that no longer exist: {stale}"


@pytest.mark.parametrize(("route", "method"), sorted(TABLE), ids=[f"{m} {r}" for r, m in sorted(TABLE)])
def test_role_matrix(world: World, route: str, method: str):
    row = TABLE[(route, method)]
    assert len(row.expect) == len(ROLES)
    path = "/" + API_PREFIX + route
    if row.obj:
        path = path.replace("<int:pk>", str(_objects(world)[row.obj].pk))
    assert "<" not in path, f"{route}: a path parameter without an object"
    body = _bodies(world)[row.body] if row.body else None
    got, bodies = {}, {}
    for role in ROLES:
        # Every role meets the same state: the request's writes are rolled back.
        with transaction.atomic():
            client = world.client(role)
            response = (
                client.generic(method, path, data=_json(body), content_type="application/json")
                if body is not None
                else client.generic(method, path)
            )
            transaction.set_rollback(True)
        got[role] = response.status_code
        if response.status_code >= 400:
            payload = response.json()
            assert set(payload) == {"code", "message", "details"}, (role, payload)
            bodies[role] = payload
    expected = dict(zip(ROLES, row.expect))
    wrong = {role: bodies.get(role) for role in ROLES if got[role] != expected[role]}
    assert got == expected, f"{method} {route}: got {got}, expected {expected}; error bodies: {wrong}"


def _json(body) -> str:
    import json

    return json.dumps(body)
