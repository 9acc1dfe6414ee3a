"""Every bad input is a 4xx with a stable code, and nothing is written.

The POST routes are read from the URLconf, so a new endpoint is covered without editing this
file: each is sent malformed bodies (not JSON, cut short, not UTF-8, nested too deep) and must
answer 400 `malformed_json` with no row added anywhere. Non-finite numbers (`NaN`,
`Infinity`, `1e999`) are 400 `non_finite_number` naming the field, on every body that carries
numbers, the agent's evaluation release included."""

from __future__ import annotations

import json

import pytest
from django.apps import apps
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from federation.models import RoundParticipant, TrainingRound
from federation.services.protocol import ADVERTISE, EVALUATE
from federation.services.tokens import token_issue
from tests.api.agents import EVAL_NOISE, build_agent_world
from tests.api.conftest import World, build_world

pytestmark = pytest.mark.django_db

MALFORMED = {
    "cut_short": b'{"reason": "x", ',
    "not_json": b"organisation=1",
    "trailing_garbage": b'{"reason": "x"} {}',
    "not_utf8": b'{"reason": "\xff\xfe"}',
    "nested_too_deep": b"[" * 2_000 + b"]" * 2_000,
    "nested_too_deep_and_long": b"[" * 100_000 + b"]" * 100_000,
    "single_quotes": b"{'reason': 'x'}",
}


def _walk(patterns, prefix: str = ""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def post_routes() -> list[tuple[str, type]]:
    """(route, view class) of every API route whose view answers POST."""
    routes = []
    for route, pattern in _walk(get_resolver().url_patterns):
        view_class = getattr(pattern.callback, "view_class", None)
        if route.startswith("api/") and view_class is not None and hasattr(view_class, "post"):
            routes.append((route, view_class))
    return sorted(routes, key=lambda r: r[0])


POST_ROUTES = post_routes()


def test_the_enumeration_finds_the_api_and_the_agent_routes():
    routes = {r for r, _ in POST_ROUTES}
    assert "api/v1/plans/<int:pk>/rounds/" in routes
    assert "api/v1/agent/rounds/<int:round_id>/<slug:phase>/" in routes
    assert "api/v1/agent/enrol/" in routes
    assert len(routes) >= 15


# Which object a route's <int:pk> names (the first pattern that matches), so that a request the
# parser let through would reach the service and write.
PK_OBJECTS = [
    ("tokens/<int:pk>/", lambda w: w.spare_token),
    ("agreements/<int:pk>/submit/", lambda w: w.draft_agreement),
    ("agreements/<int:pk>/sign/", lambda w: w.pending_agreement),
    ("agreements/<int:pk>/", lambda w: w.cast.agreement),
    ("datasets/<int:pk>/", lambda w: w.cast.dataset_a),
    ("plans/<int:pk>/rounds/", lambda w: w.idle_plan),
    ("rounds/<int:pk>/", lambda w: w.round),
    ("organisations/<int:pk>/", lambda w: w.cast.org_a),
    ("memberships/<int:pk>/", lambda w: w.membership),
    ("model-versions/<int:pk>/", lambda w: w.model_version),
]


def _url(route: str, world: World) -> str:
    url = "/" + route
    if "<int:pk>" in route:
        obj = next((f(world) for part, f in PK_OBJECTS if part in route), world.round)
        url = url.replace("<int:pk>", str(obj.pk))
    # the agent's message route: the round's evaluation phase, a JSON message
    return url.replace("<int:round_id>", str(world.round.pk)).replace("<slug:phase>", EVALUATE)


def row_counts() -> dict[str, int]:
    return {
        m._meta.label: m.objects.count()
        for m in apps.get_models()
        if m._meta.app_label in ("federation", "accounting", "auth") and not m._meta.proxy
    }


def _client_for(route: str, world: World, agent_key: str) -> APIClient:
    if route.startswith("api/v1/agent/"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {agent_key}")
        return client
    return world.client("admin")


@pytest.mark.parametrize("route", [r for r, _ in POST_ROUTES])
def test_malformed_json_on_every_post_route_is_a_400_and_writes_nothing(route):
    world = build_world()
    agent = world.cast.agent_a
    _, agent_key = token_issue(actor=agent, user=agent, scopes=["agent"], name="agent")
    url = _url(route, world)
    before = row_counts()
    for name, body in MALFORMED.items():
        response = _client_for(route, world, agent_key).post(url, body, content_type="application/json")
        if route.startswith("api/v1/agent/rounds/") and len(body) > 4096:
            # a protocol message is size-checked before anything reads it
            assert (response.status_code, response.json()["code"]) == (413, "message_too_large")
            continue
        assert response.status_code == 400, (name, response.status_code, response.content[:300])
        assert response.json()["code"] == "malformed_json", (name, response.json())
    assert row_counts() == before


@pytest.mark.parametrize("route", [r for r, v in POST_ROUTES if not r.startswith("api/v1/agent/rounds/")])
def test_a_non_finite_number_on_every_post_route_is_a_400_naming_the_field(route):
    world = build_world()
    agent = world.cast.agent_a
    _, agent_key = token_issue(actor=agent, user=agent, scopes=["agent"], name="agent")
    url = _url(route, world)
    before = row_counts()
    for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        body = f'{{"reason": "x", "threshold": {{"value": [1, {token}]}}}}'.encode()
        response = _client_for(route, world, agent_key).post(url, body, content_type="application/json")
        assert response.status_code == 400, (token, response.status_code, response.content[:300])
        error = response.json()
        assert error["code"] == "non_finite_number", (token, error)
        assert list(error["details"]["fields"]) == ["threshold.value[1]"], error
    assert row_counts() == before


def test_a_round_request_with_a_malformed_body_creates_no_round(world):
    plan = world.idle_plan
    response = world.client("admin").post(f"/api/v1/plans/{plan.pk}/rounds/", b"{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "malformed_json"
    assert not TrainingRound.objects.filter(plan=plan).exists()


def test_a_body_of_another_media_type_is_refused_not_ignored(world):
    plan = world.idle_plan
    response = world.client("admin").post(f"/api/v1/plans/{plan.pk}/rounds/", b"anything", content_type="text/plain")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    assert not TrainingRound.objects.filter(plan=plan).exists()


def test_an_empty_body_still_requests_a_round(world):
    response = world.client("admin").post(f"/api/v1/plans/{world.idle_plan.pk}/rounds/", content_type="application/json")
    assert response.status_code == 201, response.json()


# --- non-finite numbers in the bodies that carry numbers ------------------------------------


def _plan_body(world: World, **overrides) -> dict:
    body = {
        "agreement": world.cast.agreement.pk,
        "name": "Another plan",
        "purpose": "model evaluation",
        "datasets": [d.pk for d in world.cast.datasets],
        "model_spec": {"kind": "logreg"},
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
    }
    body.update(overrides)
    return body


def _raw(body: dict, field: str, token: str) -> bytes:
    """`body` as JSON text with `field`'s value replaced by the bare token (NaN is no JSON
    value, so json.dumps would not write it)."""
    marker = "__token__"
    return json.dumps({**body, field: marker}).replace(f'"{marker}"', token).encode()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["noise_multiplier", "clip_norm", "learning_rate", "sampling_rate", "eval_noise_multiplier"])
def test_plan_creation_refuses_non_finite_numbers_naming_the_field(world, field, token):
    before = row_counts()
    response = world.client("admin").post("/api/v1/plans/", _raw(_plan_body(world), field, token), content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()
    assert error["code"] == "non_finite_number"
    assert field in error["details"]["fields"], error
    assert row_counts() == before


def test_plan_creation_refuses_a_non_finite_number_inside_the_model_spec(world):
    body = json.dumps(_plan_body(world, model_spec={"kind": "mlp", "hidden": ["__token__"]})).replace('"__token__"', "NaN")
    response = world.client("admin").post("/api/v1/plans/", body.encode(), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["details"]["fields"] == {"model_spec.hidden[0]": [response.json()["details"]["fields"]["model_spec.hidden[0]"][0]]}


@pytest.mark.parametrize("field", ["epsilon_budget", "delta"])
def test_dataset_registration_refuses_non_finite_numbers(world, field):
    body = {
        "organisation": world.cast.org_a.pk,
        "agreement": world.cast.agreement.pk,
        "slug": "fresh-data",
        "name": "Fresh data",
        "record_count": 100,
        "feature_names": ["age"],
        "label_name": "outcome",
        "label_classes": ["no", "yes"],
        "feature_bounds": [[0, 1]],
        "epsilon_budget": 4.0,
        "delta": 1e-5,
    }
    before = row_counts()
    response = world.client("rep_owner").post("/api/v1/datasets/", _raw(body, field, "NaN"), content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "non_finite_number"
    assert field in response.json()["details"]["fields"]
    body["feature_bounds"] = [[0, "__token__"]]
    response = world.client("rep_owner").post(
        "/api/v1/datasets/", json.dumps(body).replace('"__token__"', "Infinity").encode(), content_type="application/json"
    )
    assert response.status_code == 400 and "feature_bounds[0][1]" in response.json()["details"]["fields"]
    assert row_counts() == before


def test_a_budget_grant_refuses_infinity(world):
    before = row_counts()
    response = world.client("admin").post(
        f"/api/v1/datasets/{world.cast.dataset_a.pk}/budget/", b'{"epsilon_budget": Infinity}', content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["code"] == "non_finite_number"
    assert "epsilon_budget" in response.json()["details"]["fields"]
    assert row_counts() == before


@pytest.mark.parametrize("field", ["min_noise_multiplier", "max_clip_norm", "max_delta", "max_epsilon_per_round", "max_epsilon_budget"])
def test_agreement_terms_refuse_non_finite_numbers(world, field):
    before = row_counts()
    response = world.client("admin").post(
        "/api/v1/agreements/", _raw({"title": "Terms", "purposes": ["x"]}, field, "NaN"), content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["code"] == "non_finite_number"
    assert field in response.json()["details"]["fields"]
    assert row_counts() == before


# --- the agent's routes ------------------------------------------------------------------------


@pytest.fixture
def agent_world(db):
    return build_agent_world()


@pytest.mark.parametrize("phase", ["aggregate", "no-such-phase", "masked-input", "EVALUATE"])
def test_an_unknown_agent_phase_is_a_404_with_a_code(agent_world, phase):
    before = row_counts()
    response = agent_world.client().post(agent_world.url(phase), b"{}", content_type="application/json")
    assert response.status_code == 404, response.content
    assert response.json()["code"] == "unknown_phase"
    assert row_counts() == before


def test_a_round_id_beyond_any_primary_key_is_a_404(agent_world):
    response = agent_world.client().post(agent_world.url(ADVERTISE, round_id=2**70), b"{}", content_type="application/json")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "release",
    [
        '{"noisy_correct": NaN, "noisy_total": 10, "noise_multiplier": 8.0}',
        '{"noisy_correct": 3, "noisy_total": Infinity, "noise_multiplier": 8.0}',
        '{"noisy_correct": 3, "noisy_total": 10, "noise_multiplier": NaN}',
        '{"noisy_correct": 3, "noisy_total": 1e999, "noise_multiplier": 8.0}',
        '{"noisy_correct": "nan", "noisy_total": 10, "noise_multiplier": 8.0}',
        '{"noisy_correct": 3, "noisy_total": 10, "noise_multiplier": "NaN"}',
        '{"noisy_correct": 3, "noisy_total": "inf", "noise_multiplier": 8.0}',
        '{"noisy_correct": 3, "noisy_total": 1' + "0" * 400 + ', "noise_multiplier": 8.0}',
    ],
)
def test_an_evaluation_release_with_a_non_finite_figure_is_refused(agent_world, release):
    round = agent_world.to_phase(EVALUATE)
    response = agent_world.client().post(agent_world.url(EVALUATE), release.encode(), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] in {"non_finite_number", "protocol_rejected"}
    link = RoundParticipant.objects.get(round=round, dataset__organisation__slug="org-a")
    assert "evaluation" not in link.metrics
    # and a correct release is still taken
    good = {"noisy_correct": 3.5, "noisy_total": 10.0, "noise_multiplier": EVAL_NOISE}
    response = agent_world.client().post(agent_world.url(EVALUATE), good, format="json")
    assert response.status_code == 200, response.content


def test_a_body_without_a_content_type_is_refused_not_ignored(world):
    plan = world.idle_plan
    response = world.client("admin").generic("POST", f"/api/v1/plans/{plan.pk}/rounds/", b"{not json", content_type="")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    assert not TrainingRound.objects.filter(plan=plan).exists()
