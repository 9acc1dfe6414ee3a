"""One access policy: the web UI and the API answer every role the same for every object both
expose (ARCHITECTURE.md, Conventions 8).

The role x object matrix is built once: the API's test world (tests/api/conftest.py, on the
shared cast of tests/factories.py), plus a representative of an organisation outside the
agreement and a second agreement audited (ledgers only) by the other auditor. Each cell is
one object or action, asked of the web UI and of the API by every actor; both answers are
reduced to ok / 403 / 404 / login and must equal each other and the rule written in the row.

Each request runs in a savepoint that is rolled back, so every actor meets the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client
from rest_framework.test import APIClient

from federation.models import Agreement, GovernanceEvent
from federation.services.agreements import agreement_create
from federation.services.tokens import token_issue
from tests.api.conftest import ALL_SCOPES, World, build_world
from tests.factories import OrganisationFactory, UserFactory, member, terms

pytestmark = pytest.mark.django_db

# Representative of Org A (owns dataset A), of Org B (another party), of Org Z (no party);
# Org A's agent (a member, not a representative); the agreement's auditor; an auditor of
# another agreement; a user with no role; nobody logged in.
ACTORS = ("admin", "rep_a", "rep_b", "stranger", "agent", "auditor", "other_auditor", "outsider", "anonymous")
OK, LOGIN = "ok", "login"

WORLD_ROLE = {
    "admin": "admin",
    "rep_a": "rep_owner",
    "rep_b": "rep_other",
    "agent": "agent",
    "auditor": "auditor",
    "other_auditor": "other_auditor",
    "outsider": "outsider",
}


def rule(**answers) -> dict:
    out = dict.fromkeys(ACTORS, 404)
    out["anonymous"] = LOGIN
    out.update(answers)
    return out


# Whoever sees the agreement: administrators, members of its parties, its auditor.
AGREEMENT_READERS = rule(admin=OK, rep_a=OK, rep_b=OK, agent=OK, auditor=OK)
# A dataset's ledger (entries, verification, audit bundle): administrators, its
# organisation's representatives, the agreement's auditor; the rest of the parties 403.
LEDGER_READERS = rule(admin=OK, rep_a=OK, rep_b=403, agent=403, auditor=OK)
# Acting for one's organisation: its representatives; the others who see the agreement 403.
REP_DECISION = rule(admin=403, rep_a=OK, rep_b=OK, agent=403, auditor=403)


@dataclass
class Matrix:
    world: World
    stranger: object
    other_agreement: Agreement
    keys: dict

    def user(self, actor: str):
        if actor == "stranger":
            return self.stranger
        if actor == "anonymous":
            return None
        return self.world.user(WORLD_ROLE[actor])

    def own_org(self, actor: str) -> str:
        """The party organisation an actor would act for on the web (the API infers it)."""
        return {"rep_b": "org-b"}.get(actor, "org-a")

    def web(self, actor: str) -> Client:
        client = Client()
        if self.user(actor) is not None:
            client.force_login(self.user(actor))
        return client

    def api(self, actor: str) -> APIClient:
        client = APIClient()
        if actor != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {self.keys[actor]}")
        return client


@pytest.fixture
def matrix(db) -> Matrix:
    world = build_world()
    c = world.cast
    stranger = member(UserFactory(username="rep-z"), OrganisationFactory(slug="org-z", name="Org Z"))
    other = agreement_create(
        actor=c.admin,
        parties=[c.org_b, c.org_c],
        auditors=[c.other_auditor],
        **terms(title="Other terms", auditor_access=Agreement.AuditorAccess.LEDGER),
    )
    keys = {actor: world.keys[role] for actor, role in WORLD_ROLE.items()}
    _, keys["stranger"] = token_issue(actor=stranger, user=stranger, scopes=ALL_SCOPES, name="tests")
    return Matrix(world, stranger, other, keys)


@dataclass(frozen=True)
class Cell:
    """One object or action: how the web UI and the API are asked, and the rule."""

    web: Callable  # (matrix, actor) -> (method, path, data)
    api: Callable  # (matrix, actor) -> (method, path, body)
    expect: dict


def _get(path_of):
    return lambda m, actor: ("GET", path_of(m), None)


def _web_post(path_of, data=None):
    return lambda m, actor: ("POST", path_of(m, actor), data(m) if data else {})


def _api_post(path_of, body=None):
    return lambda m, actor: ("POST", path_of(m), body(m) if body else {})


def _w(m: Matrix):
    return m.world


CELLS = {
    "agreement": Cell(
        _get(lambda m: f"/agreements/{_w(m).cast.agreement.pk}/"),
        _get(lambda m: f"/api/v1/agreements/{_w(m).cast.agreement.pk}/"),
        AGREEMENT_READERS,
    ),
    "organisation": Cell(
        _get(lambda m: f"/organisations/{_w(m).cast.org_a.slug}/"),
        _get(lambda m: f"/api/v1/organisations/{_w(m).cast.org_a.pk}/"),
        AGREEMENT_READERS,
    ),
    "dataset": Cell(
        _get(lambda m: f"/datasets/{_w(m).cast.dataset_a.slug}/"),
        _get(lambda m: f"/api/v1/datasets/{_w(m).cast.dataset_a.pk}/"),
        AGREEMENT_READERS,
    ),
    "ledger": Cell(
        _get(lambda m: f"/datasets/{_w(m).cast.dataset_a.slug}/ledger/"),
        _get(lambda m: f"/api/v1/datasets/{_w(m).cast.dataset_a.pk}/ledger/"),
        LEDGER_READERS,
    ),
    "ledger verification": Cell(
        _web_post(lambda m, a: f"/datasets/{_w(m).cast.dataset_a.slug}/ledger/verify/"),
        _get(lambda m: f"/api/v1/datasets/{_w(m).cast.dataset_a.pk}/ledger/verification/"),
        LEDGER_READERS,
    ),
    # The API has no bundle endpoint: the bundle is the ledger, so it follows the ledger's rule.
    "audit bundle": Cell(
        _get(lambda m: f"/datasets/{_w(m).cast.dataset_a.slug}/ledger/bundle/"),
        _get(lambda m: f"/api/v1/datasets/{_w(m).cast.dataset_a.pk}/ledger/"),
        LEDGER_READERS,
    ),
    "plan": Cell(
        _get(lambda m: f"/plans/{_w(m).cast.plan.pk}/"),
        _get(lambda m: f"/api/v1/plans/{_w(m).cast.plan.pk}/"),
        AGREEMENT_READERS,
    ),
    "round": Cell(
        _get(lambda m: f"/rounds/{_w(m).round.pk}/"),
        _get(lambda m: f"/api/v1/rounds/{_w(m).round.pk}/"),
        AGREEMENT_READERS,
    ),
    "raise budget": Cell(
        _web_post(lambda m, a: f"/datasets/{_w(m).cast.dataset_a.slug}/budget/", lambda m: {"epsilon_budget": "9"}),
        _api_post(lambda m: f"/api/v1/datasets/{_w(m).cast.dataset_a.pk}/budget/", lambda m: {"epsilon_budget": 9.0}),
        rule(admin=OK, rep_a=OK, rep_b=403, agent=403, auditor=403),
    ),
    "request round": Cell(
        _web_post(lambda m, a: f"/plans/{_w(m).idle_plan.pk}/rounds/new/"),
        _api_post(lambda m: f"/api/v1/plans/{_w(m).idle_plan.pk}/rounds/"),
        rule(admin=OK, rep_a=OK, rep_b=OK, agent=403, auditor=403),
    ),
    "sign": Cell(
        _web_post(
            lambda m, a: f"/agreements/{_w(m).pending_agreement.pk}/sign/{m.own_org(a)}/",
            lambda m: {"terms_hash": _w(m).pending_agreement.terms_hash, "confirm": "on"},
        ),
        _api_post(
            lambda m: f"/api/v1/agreements/{_w(m).pending_agreement.pk}/sign/",
            lambda m: {"terms_hash": _w(m).pending_agreement.terms_hash},
        ),
        REP_DECISION,
    ),
    "exit notice": Cell(
        _web_post(lambda m, a: f"/agreements/{_w(m).cast.agreement.pk}/exit/{m.own_org(a)}/", lambda m: {"confirm": "on"}),
        _api_post(lambda m: f"/api/v1/agreements/{_w(m).cast.agreement.pk}/exit-notice/"),
        REP_DECISION,
    ),
    "approve round": Cell(
        _web_post(lambda m, a: f"/rounds/{_w(m).round.pk}/approval/{m.own_org(a)}/"),
        _api_post(lambda m: f"/api/v1/rounds/{_w(m).round.pk}/approve/"),
        REP_DECISION,
    ),
    "reject round": Cell(
        _web_post(lambda m, a: f"/rounds/{_w(m).round.pk}/approval/{m.own_org(a)}/reject/", lambda m: {"reason": "No."}),
        _api_post(lambda m: f"/api/v1/rounds/{_w(m).round.pk}/reject/", lambda m: {"reason": "No."}),
        REP_DECISION,
    ),
}


def web_outcome(response) -> object:
    if response.status_code == 302:
        return LOGIN if response["Location"].startswith(settings.LOGIN_URL) else OK
    return OK if response.status_code == 200 else response.status_code


def api_outcome(response) -> object:
    if response.status_code == 401:
        return LOGIN
    return OK if response.status_code in (200, 201) else response.status_code


def ask_web(matrix: Matrix, cell: Cell, actor: str) -> object:
    method, path, data = cell.web(matrix, actor)
    client = matrix.web(actor)
    with transaction.atomic():
        response = client.generic(method, path) if data is None else client.post(path, data)
        transaction.set_rollback(True)
    return web_outcome(response)


def ask_api(matrix: Matrix, cell: Cell, actor: str) -> object:
    method, path, body = cell.api(matrix, actor)
    client = matrix.api(actor)
    with transaction.atomic():
        response = client.generic(method, path, data=_json(body), content_type="application/json")
        transaction.set_rollback(True)
    return api_outcome(response)


@pytest.mark.parametrize("cell", CELLS)
def test_web_and_api_give_every_actor_the_same_answer(matrix: Matrix, cell: str):
    spec = CELLS[cell]
    web = {actor: ask_web(matrix, spec, actor) for actor in ACTORS}
    api = {actor: ask_api(matrix, spec, actor) for actor in ACTORS}
    disagree = {a: (web[a], api[a]) for a in ACTORS if web[a] != api[a]}
    assert not disagree, f"{cell}: web and API disagree (web, api): {disagree}"
    assert web == spec.expect, f"{cell}: got {web}, the rule says {spec.expect}"


# --- governance history: the same events, or none, on both sides ------------------------------


def _web_events(matrix: Matrix, actor: str, agreement: Agreement) -> tuple[object, set[int]]:
    response = matrix.web(actor).get("/history/", {"agreement": agreement.pk})
    outcome = web_outcome(response)
    if outcome != OK:
        return outcome, set()
    page = response.context["page"]
    assert not page.has_next()
    return outcome, {e.pk for e in page.object_list}


def _api_events(matrix: Matrix, actor: str, agreement: Agreement) -> set[int]:
    response = matrix.api(actor).get("/api/v1/events/", {"agreement": agreement.pk, "page_size": 200})
    if response.status_code == 401:
        return set()
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["next"] is None
    return {e["id"] for e in body["results"]}


HISTORY_READERS = rule(admin=OK, rep_a=OK, rep_b=OK, agent=403, auditor=OK)
# The other agreement's auditor has ledger access only; Org A is no party to it.
OTHER_HISTORY_READERS = rule(admin=OK, rep_a=404, rep_b=OK, agent=404, auditor=404, other_auditor=403)


@pytest.mark.parametrize("which", ["cast", "other"])
def test_web_and_api_show_the_same_governance_events(matrix: Matrix, which: str):
    agreement, expect = (
        (matrix.world.cast.agreement, HISTORY_READERS) if which == "cast" else (matrix.other_agreement, OTHER_HISTORY_READERS)
    )
    everything = set(GovernanceEvent.objects.filter(agreement=agreement).values_list("id", flat=True))
    assert everything
    for actor in ACTORS:
        outcome, web_ids = _web_events(matrix, actor, agreement)
        api_ids = _api_events(matrix, actor, agreement)
        assert outcome == expect[actor], (actor, outcome)
        assert web_ids == api_ids, (actor, sorted(web_ids ^ api_ids))
        assert web_ids == (everything if outcome == OK else set()), actor


def _json(body) -> str | None:
    import json

    return None if body is None else json.dumps(body)


def test_pages_link_a_ledger_only_for_those_who_may_read_it(matrix: Matrix):
    c = matrix.world.cast
    ledger_a = f"/datasets/{c.dataset_a.slug}/ledger/"
    pages = ("/datasets/", f"/datasets/{c.dataset_a.slug}/", f"/agreements/{c.agreement.pk}/")
    for actor, linked in (("rep_a", True), ("auditor", True), ("rep_b", False), ("agent", False)):
        client = matrix.web(actor)
        for page in pages:
            html = client.get(page).content.decode()
            assert (f'href="{ledger_a}"' in html) is linked, (actor, page)
