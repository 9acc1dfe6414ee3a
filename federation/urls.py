"""The web UI's routes."""

from django.urls import path, re_path

from .web import agreements, dashboard, datasets, ledger, organisations, plans, reports, rounds

app_name = "web"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("inbox/", dashboard.inbox, name="inbox"),
    # Organisations and their people.
    path("organisations/", organisations.organisation_list, name="organisation_list"),
    path("organisations/new/", organisations.organisation_create, name="organisation_create"),
    path("organisations/<slug:slug>/", organisations.organisation_detail, name="organisation_detail"),
    path("organisations/<slug:slug>/members/new/", organisations.member_create, name="member_create"),
    path("organisations/<slug:slug>/members/<int:pk>/remove/", organisations.member_remove, name="member_remove"),
    # Partner agents.
    path("agents/", organisations.agent_list, name="agent_list"),
    # Agreements.
    path("agreements/", agreements.agreement_list, name="agreement_list"),
    path("agreements/new/", agreements.agreement_create, name="agreement_create"),
    path("agreements/<int:pk>/", agreements.agreement_detail, name="agreement_detail"),
    path("agreements/<int:pk>/edit/", agreements.agreement_edit, name="agreement_edit"),
    path("agreements/<int:pk>/submit/", agreements.agreement_submit, name="agreement_submit"),
    re_path(
        r"^agreements/(?P<pk>[0-9]+)/(?P<action>suspend|resume|terminate)/$", agreements.agreement_status, name="agreement_status"
    ),
    path("agreements/<int:pk>/sign/<slug:org_slug>/", agreements.agreement_sign, name="agreement_sign"),
    path("agreements/<int:pk>/exit/<slug:org_slug>/", agreements.agreement_exit, name="agreement_exit"),
    path("agreements/<int:pk>/report/", reports.agreement_report, name="agreement_report"),
    # Governance history.
    path("history/", dashboard.event_list, name="event_list"),
    path("history/export.csv", reports.event_csv, name="event_csv"),
    # Datasets, budgets and ledgers.
    path("datasets/", datasets.dataset_list, name="dataset_list"),
    path("datasets/new/", datasets.dataset_create, name="dataset_create"),
    path("datasets/<slug:slug>/", datasets.dataset_detail, name="dataset_detail"),
    path("datasets/<slug:slug>/budget/", datasets.dataset_raise_budget, name="dataset_raise_budget"),
    path("datasets/<slug:slug>/ledger/", ledger.ledger, name="ledger"),
    path("datasets/<slug:slug>/ledger/export.csv", reports.ledger_csv, name="ledger_csv"),
    path("datasets/<slug:slug>/ledger/verify/", ledger.ledger_verify, name="ledger_verify"),
    path("datasets/<slug:slug>/ledger/bundle/", ledger.ledger_bundle, name="ledger_bundle"),
    # Training plans and rounds.
    path("plans/", plans.plan_list, name="plan_list"),
    path("plans/new/", plans.plan_create, name="plan_create"),
    path("plans/<int:pk>/", plans.plan_detail, name="plan_detail"),
    path("plans/<int:pk>/rounds/new/", rounds.round_request, name="round_request"),
    path("plans/<int:pk>/pause/", plans.plan_pause, name="plan_pause"),
    path("plans/<int:pk>/resume/", plans.plan_resume, name="plan_resume"),
    path("plans/<int:pk>/standing-approval/<slug:org_slug>/", plans.standing_approval, name="standing_approval"),
    path("rounds/", rounds.round_list, name="round_list"),
    path("rounds/<int:pk>/", rounds.round_detail, name="round_detail"),
    path("rounds/<int:pk>/progress/", rounds.round_progress, name="round_progress"),
    path("rounds/<int:pk>/approval/", rounds.round_approval_pick, name="round_approval_pick"),
    path("rounds/<int:pk>/approval/<slug:org_slug>/", rounds.round_approval, name="round_approval"),
    path("rounds/<int:pk>/approval/<slug:org_slug>/reject/", rounds.round_reject, name="round_reject"),
]
