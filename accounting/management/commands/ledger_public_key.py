"""python manage.py ledger_public_key [--hex]: the coordinator's ledger signing key, for auditors."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print the coordinator's Ed25519 ledger public key (PEM, or raw hex with --hex) and its key id."

    def add_arguments(self, parser):
        parser.add_argument("--hex", action="store_true")

    def handle(self, *args, **options):
        from accounting import heads

        self.stdout.write(heads.public_key_hex() if options["hex"] else heads.public_key_pem().rstrip())
        self.stderr.write(f"key id (SHA-256 of the raw key): {heads.key_id()}")
