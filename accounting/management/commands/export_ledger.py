"""python manage.py export_ledger --out FILE [--dataset SLUG] [--sign-pending]

Writes an audit bundle (entries, signed heads, the coordinator's public key, the accountant
parameters) that `verify_ledger --bundle FILE` verifies without the database. Each chain goes
up to its latest signed head: heads are signed after every append and by the beat sweep, not
by exporting. `--sign-pending` first signs the heads left unsigned (signing on commit turned
off, or no beat running), an operator's explicit act.
"""

from __future__ import annotations

import os
import tempfile

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Write a signed audit bundle of the budget ledgers."

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="File to write (replaced atomically).")
        parser.add_argument("--dataset", help="Only this dataset's chain (slug).")
        parser.add_argument("--sign-pending", action="store_true", help="First sign the chain heads left unsigned.")

    def handle(self, *args, **options):
        from accounting import audit, heads
        from federation.models import Dataset

        datasets = None
        if options["dataset"]:
            datasets = list(Dataset.objects.filter(slug=options["dataset"]))
            if not datasets:
                raise CommandError(f"no dataset {options['dataset']!r}", returncode=2)
        if options["sign_pending"]:
            for head in heads.sign_pending_heads(datasets=datasets):
                self.stdout.write(f"{head.dataset_slug}: head #{head.seq} signed")
        out = os.path.abspath(options["out"])
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".bundle-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                summary = audit.export_bundle(f, datasets=datasets)
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        for slug, seq in summary["chains"].items():
            self.stdout.write(f"{slug}: {seq} entries, up to its latest signed head")
        for slug in summary["unsigned"]:
            self.stderr.write(f"{slug}: no signed head yet, left out (see --sign-pending)")
        self.stdout.write(f"wrote {out} (key {summary['key_id']})")
