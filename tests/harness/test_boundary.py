"""The harness (harness/: local stack, simulation, demo data) is no part of the apps: of their
modules only the management commands that run it import it (ARCHITECTURE.md, Layers)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
APPS = ("federation", "accounting", "notifications", "fedgov")
HARNESS_MODULES = {"localstack", "simulation", "demo"}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_app_module_but_a_management_command_imports_the_harness():
    offenders, commands = [], []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            uses = {n for n in _imports(path) if n.split(".")[0] == "harness"}
            if not uses:
                continue
            if path.parent.name == "commands" and path.parent.parent.name == "management":
                commands.append(path.name)
            else:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(uses)}")
    assert not offenders, offenders
    assert "simulate.py" in commands  # the check sees the imports it is about


def test_the_harness_lives_only_in_harness():
    assert {p.stem for p in (ROOT / "harness").glob("*.py")} >= HARNESS_MODULES
    assert not [m for m in HARNESS_MODULES if (ROOT / "federation" / f"{m}.py").exists()]
