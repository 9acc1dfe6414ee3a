"""Partner agent routes under /api/v1/agent/."""

from django.urls import path

from . import agent

urlpatterns = [
    path("enrol/", agent.EnrolView.as_view(), name="agent-enrol"),
    path("tasks/", agent.TasksView.as_view(), name="agent-tasks"),
    path("rounds/<int:round_id>/<slug:phase>/", agent.SubmitView.as_view(), name="agent-submit"),
]
