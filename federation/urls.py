"""The web UI's routes."""

from django.urls import path, re_path

from . import views, views_accounts, views_reports

app_name = "web"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("inbox/", views.inbox, name="inbox"),
    # Organisations and their people.
    path("organisations/", views.organisation_list, name="organisation_list"),
    path("organisations/new/", views.organisation_create, name="organisation_create"),
    path("organisations/<slug:slug>/", views.organisation_detail, name="organisation_detail"),
    path("organisations/<slug:slug>/members/new/", views.member_create, name="member_create"),
    path("organisations/<slug:slug>/members/<int:pk>/remove/", views_accounts.member_remove, name="member_remove"),
    # Partner agents.
    path("agents/", views.agent_list, name="agent_list"),
    # Agreements.
    path("agreements/", views.agreement_list, name="agreement_list"),
    path("agreements/new/", views.agreement_create, name="agreement_create"),
    path("agreements/<int:pk>/", views.agreement_detail, name="agreement_detail"),
    path("agreements/<int:pk>/edit/", views.agreement_edit, name="agreement_edit"),
    path("agreements/<int:pk>/submit/", views.agreement_submit, name="agreement_submit"),
    re_path(
        r"^agreements/(?P<pk>[0-9]+)/(?P<action>suspend|resume|terminate)/$", views.agreement_status, name="agreement_status"
    ),
    path("agreements/<int:pk>/sign/<slug:org_slug>/", views.agreement_sign, name="agreement_sign"),
    path("agreements/<int:pk>/exit/<slug:org_slug>/", views.agreement_exit, name="agreement_exit"),
    path("agreements/<int:pk>/report/", views_reports.agreement_report, name="agreement_report"),
    # Governance history.
    path("history/", views.event_list, name="event_list"),
    path("history/export.csv", views_reports.event_csv, name="event_csv"),
    # Datasets, budgets and ledgers.
    path("datasets/", views.dataset_list, name="dataset_list"),
    path("datasets/new/", views.dataset_create, name="dataset_create"),
    path("datasets/<slug:slug>/", views.dataset_detail, name="dataset_detail"),
    path("datasets/<slug:slug>/budget/", views.dataset_raise_budget, name="dataset_raise_budget"),
    path("datasets/<slug:slug>/ledger/", views.ledger, name="ledger"),
    path("datasets/<slug:slug>/ledger/export.csv", views_reports.ledger_csv, name="ledger_csv"),
    path("datasets/<slug:slug>/ledger/verify/", views.ledger_verify, name="ledger_verify"),
    path("datasets/<slug:slug>/ledger/bundle/", views.ledger_bundle, name="ledger_bundle"),
    # Training plans and rounds.
    path("plans/", views.plan_list, name="plan_list"),
    path("plans/new/", views.plan_create, name="plan_create"),
    path("plans/<int:pk>/", views.plan_detail, name="plan_detail"),
    path("plans/<int:pk>/rounds/new/", views.round_request, name="round_request"),
    path("plans/<int:pk>/pause/", views.plan_pause, name="plan_pause"),
    path("plans/<int:pk>/resume/", views.plan_resume, name="plan_resume"),
    path("plans/<int:pk>/standing-approval/<slug:org_slug>/", views.standing_approval, name="standing_approval"),
    path("rounds/", views.round_list, name="round_list"),
    path("rounds/<int:pk>/", views.round_detail, name="round_detail"),
    path("rounds/<int:pk>/progress/", views.round_progress, name="round_progress"),
    path("rounds/<int:pk>/approval/", views.round_approval_pick, name="round_approval_pick"),
    path("rounds/<int:pk>/approval/<slug:org_slug>/", views.round_approval, name="round_approval"),
    path("rounds/<int:pk>/approval/<slug:org_slug>/reject/", views.round_reject, name="round_reject"),
]
