"""python manage.py issue_token --user USERNAME --scope SCOPE[,SCOPE] [--days N] [--name NAME]"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from federation.services.tokens import token_issue
from fedgov.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API token for a user and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username the token acts as")
        parser.add_argument("--scope", required=True, help="comma-separated: read, trigger, approve, agent")
        parser.add_argument("--days", type=int, default=90, help="days until it expires (default 90; 0 = never)")
        parser.add_argument("--name", default="", help="a label to recognise the token by")

    def handle(self, *args, **opts):
        User = get_user_model()
        try:
            user = User.objects.get(username=opts["user"])
        except User.DoesNotExist:
            raise CommandError(f"No user named {opts['user']!r}.") from None
        if opts["days"] < 0:
            raise CommandError("--days must be 0 (never expires) or more.")
        try:
            token, key = token_issue(
                actor=None, user=user, scopes=opts["scope"], name=opts["name"], expires_in_days=opts["days"] or None
            )
        except ApplicationError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(key)
