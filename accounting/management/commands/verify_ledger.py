"""python manage.py verify_ledger [--dataset SLUG] [--bundle FILE [--since OLDFILE] [--public-key KEY | --trust-bundle-key] [--agent-keys FILE]]

Without --bundle: replays every chain in the database (streaming), checking hashes, signed
heads, the two-phase protocol and the stored epsilon against a recomposition with
dp-accounting, then the cached budget rows. With --bundle: verifies an exported audit bundle
offline (no database access at all), its partners' receipts, and with --since that it
extends an older bundle; this is `python -m accounting.verify` (accounting/verify.py), the
auditor's verifier, so both give the same verdict.
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
        parser.add_argument(
            "--public-key", help="With --bundle: the coordinator key to pin (PEM file, or 64 hex digits inline or in a file)."
        )
        parser.add_argument(
            "--trust-bundle-key", action="store_true", help="With --bundle: verify against the bundle's own key, unpinned."
        )
        parser.add_argument(
            "--agent-keys", help="With --bundle: JSON file {organisation: [hex keys]} of the partners' agent keys to pin."
        )
        parser.add_argument(
            "--require-tickets", action="store_true",
            help="With --bundle: fail, instead of warning, when committed rounds name tickets the bundle does not carry.",
        )
        parser.add_argument("--chunk-size", type=int, default=2000, help="Entries fetched per query when streaming.")

    def handle(self, *args, **options):
        started = time.monotonic()
        if options["since"] and not options["bundle"]:
            raise CommandError("--since needs --bundle", returncode=2)
        if options["bundle"]:
            self._verify_bundle(options)
        else:
            if options["public_key"] or options["trust_bundle_key"] or options["agent_keys"] or options["require_tickets"]:
                raise CommandError("--public-key, --trust-bundle-key, --agent-keys and --require-tickets need --bundle", returncode=2)
            self._verify_database(options)
        self.stdout.write(f"verified in {time.monotonic() - started:.2f} s")

    def _verify_bundle(self, options):
        from accounting import verify

        try:
            verdict = verify.verify_files(
                options["bundle"],
                since=options["since"],
                public_key=options["public_key"],
                trust_bundle_key=options["trust_bundle_key"],
                dataset=options["dataset"],
                agent_keys=options["agent_keys"],
                require_tickets=options["require_tickets"],
            )
        except verify.VerifyFailed as e:
            raise CommandError(str(e), returncode=e.exit_code) from None
        for line in verdict.lines:
            self.stdout.write(line)
        for line in verdict.warnings:
            self.stderr.write(line)
        self.stdout.write(self.style.SUCCESS("bundle verifies" + (" and extends the old one" if options["since"] else "")))

    def _verify_database(self, options):
        from django.db import connection

        from accounting import audit, triggers
        from federation.models import Dataset

        datasets = None
        if options["dataset"]:
            datasets = list(Dataset.objects.filter(slug=options["dataset"]))
            if not datasets:
                raise CommandError(f"no dataset {options['dataset']!r}", returncode=2)
        missing = triggers.APPEND_ONLY.expected() - triggers.APPEND_ONLY.installed(connection)
        if missing:
            self.stderr.write(f"warning: append-only triggers missing: {', '.join(sorted(missing))}")
        results = audit.verify_all(datasets=datasets, chunk_size=options["chunk_size"])
        for result in results:
            self.stdout.write(result.line())
        bad = [r for r in results if not r.ok]
        if bad:
            raise CommandError(f"ledger does not verify: {bad[0].error}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"{len(results)} chains verify"))
