"""The partner-side packages never import Django, DRF or Celery (ARCHITECTURE.md, "Layers"): a
partner installs `federation.learning`, `federation.secagg` and `federation.agent` and runs
them without the coordinator's stack."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = ("django", "rest_framework", "celery")
PARTNER_PACKAGES = ("learning", "secagg", "agent")
# The coordinator's pure accounting modules a partner may share (numpy and dp-accounting only):
# the event format, the RDP composition, the canonical JSON of ledger entries, the signed
# ticket and receipt formats (tickets, receipts); and the auditor's bundle verifier (bundle,
# manifest: what `accounting.verify` runs), with which a partner reconciles the coordinator's
# bundle with its own ledger.
SHARED_PURE_MODULES = (
    "accounting.accountant", "accounting.chain", "accounting.dp_events", "accounting.verify",
    "accounting.bundle", "accounting.manifest", "accounting.receipts", "accounting.tickets",
)


@pytest.mark.parametrize("package", PARTNER_PACKAGES)
def test_a_partner_package_imports_no_django_celery_or_drf(package):
    code = (
        f"import sys, federation.{package}, federation.{package}.__main__ as _m; "
        if (ROOT / "federation" / package / "__main__.py").exists()
        else f"import sys, federation.{package}; "
    ) + f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]; assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", PARTNER_PACKAGES)
def test_no_partner_module_names_a_forbidden_package(package):
    # Also catches imports hidden inside functions, which the subprocess check cannot see,
    # and relative imports that climb into the coordinator's code (federation.models, ...).
    checked = 0
    for path in (ROOT / "federation" / package).rglob("*.py"):
        checked += 1
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from accounting import chain` names the module accounting.chain.
                names = [f"{node.module}.{a.name}" if node.module == "accounting" else node.module for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:
                # `from ..x import` leaves the package: only its partner-side siblings are allowed.
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                for target in targets:
                    assert target in PARTNER_PACKAGES, f"{path.name} imports ..{target} from the coordinator"
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
                assert name.split(".")[0] != "fedgov", f"{path.name} imports {name}"
                if name.startswith("federation."):
                    assert name.split(".")[1] in PARTNER_PACKAGES, f"{path.name} imports {name}"
                if name == "accounting" or name.startswith("accounting."):
                    assert name in SHARED_PURE_MODULES, f"{path.name} imports {name} from the coordinator's accounting"
    assert checked > 0
