"""Every page renders for every role it is meant for, and answers 403/404 to the others.

The permission rule (ARCHITECTURE.md, Conventions 8): someone with no relation to the object gets 404 (its
existence is not revealed); someone who may see it but not act gets 403.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROLES = ("admin", "rep_a", "rep_b", "auditor", "other_auditor", "outsider", "stranger")
EVERYONE = dict.fromkeys(ROLES, 200)
ADMIN_FORM = {"admin": 200, "rep_a": 403, "rep_b": 403, "auditor": 403, "other_auditor": 403, "outsider": 404, "stranger": 403}
# Objects of the cast's agreement: parties and its auditor see them; the rest get 404.
AGREEMENT_READERS = {
    "admin": 200,
    "rep_a": 200,
    "rep_b": 200,
    "auditor": 200,
    "other_auditor": 404,
    "outsider": 404,
    "stranger": 404,
}
# A dataset's ledger and audit bundle: administrators, the representatives of its
# organisation and the agreement's auditor; the other parties see the dataset, not its ledger.
LEDGER_READERS = dict(AGREEMENT_READERS, rep_b=403)
# Changes of the cast's agreement reserved to administrators.
AGREEMENT_ADMIN = {
    "admin": 200,
    "rep_a": 403,
    "rep_b": 403,
    "auditor": 403,
    "other_auditor": 404,
    "outsider": 404,
    "stranger": 404,
}
# Acting for org A: only its representative.
FOR_ORG_A = {"admin": 403, "rep_a": 200, "rep_b": 403, "auditor": 403, "other_auditor": 404, "outsider": 404, "stranger": 404}


def actor(cast, stranger_rep, role):
    return stranger_rep if role == "stranger" else getattr(cast, role)


PAGES = {
    "dashboard": (lambda c, r: reverse("web:dashboard"), EVERYONE),
    "inbox": (lambda c, r: reverse("web:inbox"), EVERYONE),
    "organisation_list": (lambda c, r: reverse("web:organisation_list"), EVERYONE),
    "organisation_create": (lambda c, r: reverse("web:organisation_create"), ADMIN_FORM),
    "organisation_detail": (
        lambda c, r: reverse("web:organisation_detail", args=[c.org_a.slug]),
        AGREEMENT_READERS,  # its own people, and whoever sees an agreement it is a party to
    ),
    "member_create": (
        lambda c, r: reverse("web:member_create", args=[c.org_a.slug]),
        {"admin": 200, "rep_a": 403, "rep_b": 403, "auditor": 403, "other_auditor": 403, "outsider": 404, "stranger": 403},
    ),
    # Partner agents: administrators (all) and representatives (their own organisations').
    "agent_list": (
        lambda c, r: reverse("web:agent_list"),
        {"admin": 200, "rep_a": 200, "rep_b": 200, "auditor": 403, "other_auditor": 403, "outsider": 403, "stranger": 200},
    ),
    "agreement_list": (lambda c, r: reverse("web:agreement_list"), EVERYONE),
    "agreement_create": (lambda c, r: reverse("web:agreement_create"), ADMIN_FORM),
    "agreement_detail": (lambda c, r: reverse("web:agreement_detail", args=[c.agreement.pk]), AGREEMENT_READERS),
    "agreement_amend": (lambda c, r: reverse("web:agreement_edit", args=[c.agreement.pk]), AGREEMENT_ADMIN),
    "agreement_suspend": (lambda c, r: reverse("web:agreement_status", args=[c.agreement.pk, "suspend"]), AGREEMENT_ADMIN),
    "agreement_terminate": (lambda c, r: reverse("web:agreement_status", args=[c.agreement.pk, "terminate"]), AGREEMENT_ADMIN),
    "agreement_sign": (lambda c, r: reverse("web:agreement_sign", args=[c.agreement.pk, c.org_a.slug]), FOR_ORG_A),
    "agreement_exit": (lambda c, r: reverse("web:agreement_exit", args=[c.agreement.pk, c.org_a.slug]), FOR_ORG_A),
    "event_list": (lambda c, r: reverse("web:event_list"), EVERYONE),
    "event_list_of_agreement": (lambda c, r: reverse("web:event_list") + f"?agreement={c.agreement.pk}", AGREEMENT_READERS),
    "dataset_list": (lambda c, r: reverse("web:dataset_list"), EVERYONE),
    "dataset_create": (
        lambda c, r: reverse("web:dataset_create"),
        {"admin": 200, "rep_a": 200, "rep_b": 200, "auditor": 403, "other_auditor": 403, "outsider": 404, "stranger": 200},
    ),
    "dataset_detail": (lambda c, r: reverse("web:dataset_detail", args=[c.dataset_a.slug]), AGREEMENT_READERS),
    "ledger": (lambda c, r: reverse("web:ledger", args=[c.dataset_a.slug]), LEDGER_READERS),
    "ledger_filtered": (
        lambda c, r: reverse("web:ledger", args=[c.dataset_a.slug]) + f"?kind=COMMIT&round={r.pk}",
        LEDGER_READERS,
    ),
    "ledger_bundle": (lambda c, r: reverse("web:ledger_bundle", args=[c.dataset_a.slug]), LEDGER_READERS),
    "plan_list": (lambda c, r: reverse("web:plan_list"), EVERYONE),
    "plan_create": (lambda c, r: reverse("web:plan_create"), ADMIN_FORM),
    "plan_detail": (lambda c, r: reverse("web:plan_detail", args=[c.plan.pk]), AGREEMENT_READERS),
    "standing_approval": (lambda c, r: reverse("web:standing_approval", args=[c.plan.pk, c.org_a.slug]), FOR_ORG_A),
    "round_list": (lambda c, r: reverse("web:round_list"), EVERYONE),
    "round_detail": (lambda c, r: reverse("web:round_detail", args=[r.pk]), AGREEMENT_READERS),
    "round_progress": (lambda c, r: reverse("web:round_progress", args=[r.pk]), AGREEMENT_READERS),
    "round_approval": (lambda c, r: reverse("web:round_approval", args=[r.pk, c.org_a.slug]), FOR_ORG_A),
}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_answers_each_role_as_the_permission_rule_says(cast, stranger_rep, completed_round, as_user, page):
    build, expected = PAGES[page]
    # The approval page needs a round awaiting approval; the others show the completed one.
    round = completed_round
    if page == "round_approval":
        from federation.services.rounds import round_request

        round = round_request(actor=cast.admin, plan=cast.plan)
    url = build(cast, round)
    got = {}
    for role in ROLES:
        response = as_user(actor(cast, stranger_rep, role)).get(url)
        got[role] = response.status_code
    assert got == expected


def test_anonymous_visitors_are_sent_to_the_login_page(cast, as_user):
    for url in (
        reverse("web:dashboard"),
        reverse("web:agreement_detail", args=[cast.agreement.pk]),
        reverse("web:ledger", args=[cast.dataset_a.slug]),
    ):
        response = as_user(None).get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_login_page_renders_and_logs_in(cast, as_user):
    client = as_user(None)
    assert "Log in to fedgov" in client.get("/accounts/login/").content.decode()
    response = client.post("/accounts/login/", {"username": "rep-a", "password": "wrong"})
    assert "did not match" in response.content.decode()
    response = client.post("/accounts/login/", {"username": "rep-a", "password": "pw"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


INLINE_STYLE = re.compile(r"<[^>]+\sstyle=", re.I)
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+=", re.I)


@pytest.mark.parametrize("role", ["admin", "rep_a", "auditor"])
def test_pages_carry_no_inline_script_or_style_the_csp_would_refuse(cast, stranger_rep, completed_round, as_user, role):
    client = as_user(getattr(cast, role))
    for page, (build, expected) in PAGES.items():
        if expected[role] != 200 or page in ("ledger_bundle", "round_approval"):
            continue
        html = client.get(build(cast, completed_round)).content.decode()
        assert not INLINE_STYLE.search(html), page
        assert not INLINE_SCRIPT.search(html), page
        assert not INLINE_HANDLER.search(html), page
    response = client.get("/")
    assert "script-src 'self'" in response["Content-Security-Policy"]


def test_a_missing_page_says_what_went_wrong(cast, as_user):
    response = as_user(cast.rep_a).get("/agreements/999999/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "404" in html and "Agreement not found." in html


def test_a_forbidden_page_says_which_rule_refused(cast, waiting_round, as_user):
    response = as_user(cast.rep_b).get(reverse("web:round_approval", args=[waiting_round.pk, cast.org_a.slug]))
    assert response.status_code == 403
    html = response.content.decode()
    assert "403" in html and "You are not a representative of Org A" in html


def test_an_unknown_address_gets_the_404_page(cast, as_user):
    response = as_user(cast.rep_a).get("/no/such/page/")
    assert response.status_code == 404
    assert "There is no page at /no/such/page/" in response.content.decode()


def test_the_500_page_renders_without_a_request_context(rf):
    from django.views.defaults import server_error

    response = server_error(rf.get("/"))
    html = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in html and "not half-applied" in html
