"""python manage.py demo_agents --server URL --out DIR

For `make run`: writes each demo hospital's partition of the demo data into DIR and issues
its agent a fresh token; prints one line per hospital, `slug|token|csv path`, for the
script that starts the agents."""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from federation.services.tokens import token_issue
from harness import demo


class Command(BaseCommand):
    help = "Write the demo partitions and issue the demo agents' tokens (used by make run)."

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--server", default="http://127.0.0.1:8000")

    def handle(self, *args, **opts):
        paths = demo.write_partitions(opts["out"])
        User = get_user_model()
        for (slug, _), path in zip(demo.HOSPITALS, paths):
            user = User.objects.filter(username=f"agent-{slug}").first()
            if user is None:
                raise CommandError("Run seed_demo first: the demo agents' users do not exist.")
            _, key = token_issue(actor=None, user=user, scopes=["agent"], name="make run", expires_in_days=7)
            self.stdout.write(f"{slug}|{key}|{path}")
