"""The Celery application.

Rounds, aggregation and deadlines each have their own queue so that aggregation workers can
run on other machines against the same Redis and database (see the README's deployment
section). Tasks are acknowledged late and re-queued when their worker dies: every task is
idempotent (a compare-and-set under a row lock), so running one twice is harmless.
"""

import os

from celery import Celery

from fedgov.memory import release_large_buffers

release_large_buffers()  # 4 MB vectors go back to the OS when freed (fedgov/memory.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings")

app = Celery("fedgov")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="fedgov.ping", bind=True, acks_late=True, ignore_result=False)
def ping(self, value: str) -> dict:
    """Round-trip check used by the health view and the broker integration test."""
    return {"pong": value, "worker": self.request.hostname}
