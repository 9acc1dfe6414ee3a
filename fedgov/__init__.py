"""fedgov: the governance and privacy-budget control plane for cross-silo federated learning."""

from .celery import app as celery_app

__all__ = ("celery_app",)
