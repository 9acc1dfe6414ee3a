"""Partner agent routes under /api/v1/agent/."""

from django.urls import path

from . import agent

urlpatterns = [
    path("enrol/", agent.EnrolView.as_view(), name="agent-enrol"),
    path("tasks/", agent.TasksView.as_view(), name="agent-tasks"),
    # Before the phase route, which would take "refuse" and "receipt" for phase names.
    path("rounds/<int:round_id>/refuse/", agent.RefuseView.as_view(), name="agent-refuse"),
    path("rounds/<int:round_id>/receipt/", agent.ReceiptView.as_view(), name="agent-receipt"),
    path("rounds/<int:round_id>/model/<int:version>/", agent.ModelView.as_view(), name="agent-model"),
    path("rounds/<int:round_id>/<slug:phase>/", agent.SubmitView.as_view(), name="agent-submit"),
]
