"""python manage.py verify_ledger [--dataset SLUG] [--bundle FILE [--since OLDFILE]] [--public-key PEM]

Without --bundle: replays every chain in the database (streaming), checking hashes, signed
heads, the two-phase protocol and the stored epsilon against a recomposition with
dp-accounting, then the cached budget rows. With --bundle: verifies an exported audit bundle
offline (no database access at all), and with --since that it extends an older bundle.
Exit status 0 when everything verifies; otherwise 1, naming the first bad entry and why.
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Verify the budget ledgers (database or an audit bundle); exit 0 only if every chain verifies."
    requires_system_checks: list = []  # an auditor's bundle check needs no database or checks

    def add_arguments(self, parser):
        parser.add_argument("--dataset", help="Only this dataset's chain (slug).")
        parser.add_argument("--bundle", help="Verify this audit bundle offline instead of the database.")
        parser.add_argument("--since", help="With --bundle: an older bundle the new one must extend.")
        parser.add_argument("--public-key", help="With --bundle: PEM file of the coordinator key to pin.")
        parser.add_argument("--chunk-size", type=int, default=2000, help="Entries fetched per query when streaming.")

    def handle(self, *args, **options):
        started = time.monotonic()
        if options["since"] and not options["bundle"]:
            raise CommandError("--since needs --bundle", returncode=2)
        if options["bundle"]:
            self._verify_bundle(options)
        else:
            if options["public_key"]:
                raise CommandError("--public-key needs --bundle", returncode=2)
            self._verify_database(options)
        self.stdout.write(f"verified in {time.monotonic() - started:.2f} s")

    def _verify_bundle(self, options):
        from accounting import bundle

        pinned = None
        if options["public_key"]:
            pinned = _key_id_of_pem(options["public_key"])
        try:
            new = bundle.load(options["bundle"])
            report = bundle.verify(new, pinned_key_id=pinned)
            if options["dataset"]:
                report.chains = [c for c in report.chains if c.dataset == options["dataset"]]
            for line in report.lines():
                self.stdout.write(line)
            if options["since"]:
                old = bundle.load(options["since"])
                bundle.verify(old, pinned_key_id=report.key_id)
                for line in bundle.verify_consistency(old, new):
                    self.stdout.write(line)
        except bundle.BundleError as e:
            raise CommandError(f"bundle does not verify: {e}", returncode=1) from None
        self.stdout.write(self.style.SUCCESS("bundle verifies" + (" and extends the old one" if options["since"] else "")))

    def _verify_database(self, options):
        from django.db import connection

        from accounting import ledger, triggers
        from federation.models import Dataset

        datasets = None
        if options["dataset"]:
            datasets = list(Dataset.objects.filter(slug=options["dataset"]))
            if not datasets:
                raise CommandError(f"no dataset {options['dataset']!r}", returncode=2)
        missing = triggers.expected() - triggers.installed(connection)
        if missing:
            self.stderr.write(f"warning: append-only triggers missing: {', '.join(sorted(missing))}")
        results = ledger.verify_all(datasets=datasets, chunk_size=options["chunk_size"])
        for result in results:
            self.stdout.write(result.line())
        bad = [r for r in results if not r.ok]
        if bad:
            raise CommandError(f"ledger does not verify: {bad[0].error}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"{len(results)} chains verify"))


def _key_id_of_pem(path: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from accounting.bundle import key_id_of

    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_public_key(f.read())
    except (OSError, ValueError) as e:
        raise CommandError(f"cannot read the public key {path}: {e}", returncode=2) from None
    if not isinstance(key, Ed25519PublicKey):
        raise CommandError(f"{path} is not an Ed25519 public key", returncode=2)
    return key_id_of(key.public_bytes_raw())
