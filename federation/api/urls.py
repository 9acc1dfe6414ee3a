"""REST API routes under /api/v1/ (the partner agent's routes, /api/v1/agent/, are in
federation/api/agent_urls.py)."""

from django.urls import include, path

from . import agents, agreements, datasets, events, ledger, model_versions, organisations, plans, rounds, tokens, views

app_name = "api"

urlpatterns = [
    path("", views.IndexView.as_view(), name="index"),
    path("health/", views.HealthView.as_view(), name="health"),
    path("auth/token/", tokens.ObtainTokenView.as_view(), name="auth-token"),
    path("tokens/", tokens.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:pk>/revoke/", tokens.TokenRevokeView.as_view(), name="token-revoke"),
    path("organisations/", organisations.OrganisationListView.as_view(), name="organisations"),
    path("organisations/<int:pk>/", organisations.OrganisationDetailView.as_view(), name="organisation"),
    path("memberships/", organisations.MembershipListView.as_view(), name="memberships"),
    path("memberships/<int:pk>/", organisations.MembershipDetailView.as_view(), name="membership"),
    path("agents/", agents.AgentListView.as_view(), name="agents"),
    path("agents/<int:pk>/", agents.AgentDetailView.as_view(), name="agent"),
    path("agreements/", agreements.AgreementListView.as_view(), name="agreements"),
    path("agreements/<int:pk>/", agreements.AgreementDetailView.as_view(), name="agreement"),
    path("agreements/<int:pk>/submit/", agreements.AgreementSubmitView.as_view(), name="agreement-submit"),
    path("agreements/<int:pk>/sign/", agreements.AgreementSignView.as_view(), name="agreement-sign"),
    path("agreements/<int:pk>/amend/", agreements.AgreementAmendView.as_view(), name="agreement-amend"),
    path("agreements/<int:pk>/exit-notice/", agreements.AgreementExitNoticeView.as_view(), name="agreement-exit-notice"),
    path("datasets/", datasets.DatasetListView.as_view(), name="datasets"),
    path("datasets/<int:pk>/", datasets.DatasetDetailView.as_view(), name="dataset"),
    path("datasets/<int:pk>/budget/", ledger.DatasetBudgetView.as_view(), name="dataset-budget"),
    path("datasets/<int:pk>/ledger/", ledger.LedgerEntryListView.as_view(), name="dataset-ledger"),
    path("datasets/<int:pk>/ledger/verification/", ledger.LedgerVerificationView.as_view(), name="dataset-ledger-verification"),
    path("plans/", plans.PlanListView.as_view(), name="plans"),
    path("plans/propose/", plans.PlanProposeView.as_view(), name="plan-propose"),
    path("plans/<int:pk>/", plans.PlanDetailView.as_view(), name="plan"),
    path("plans/<int:pk>/rounds/", rounds.PlanRoundsView.as_view(), name="plan-rounds"),
    path("plans/<int:pk>/pause/", plans.PlanPauseView.as_view(), name="plan-pause"),
    path("plans/<int:pk>/resume/", plans.PlanResumeView.as_view(), name="plan-resume"),
    path("plans/<int:pk>/retry-policy/", plans.PlanRetryPolicyView.as_view(), name="plan-retry-policy"),
    path("rounds/", rounds.RoundListView.as_view(), name="rounds"),
    path("rounds/<int:pk>/", rounds.RoundDetailView.as_view(), name="round"),
    path("rounds/<int:pk>/participants/", rounds.RoundParticipantsView.as_view(), name="round-participants"),
    path("rounds/<int:pk>/approve/", rounds.RoundApproveView.as_view(), name="round-approve"),
    path("rounds/<int:pk>/reject/", rounds.RoundRejectView.as_view(), name="round-reject"),
    path("events/", events.EventListView.as_view(), name="events"),
    path("model-versions/", model_versions.ModelVersionListView.as_view(), name="model-versions"),
    path("model-versions/<int:pk>/", model_versions.ModelVersionDetailView.as_view(), name="model-version"),
    path("model-versions/<int:pk>/params/", model_versions.ModelVersionParamsView.as_view(), name="model-version-params"),
    path("", include("notifications.api_urls")),
]
