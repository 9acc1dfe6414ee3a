"""The codebase's own rules that a linter does not check (ARCHITECTURE.md, Conventions).

Each rule reads the source tree, so a new module that breaks one fails here with its name."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("federation", "accounting")
MAX_LINES = 500
# Modules whose length is the domain's, not a mixture of concerns: the models (one file per
# app, as Django expects) and the migrations (generated history).
LONG_ALLOWED = {"models.py"}
# SQL strings belong to the database's own machinery only: the trigger installers.
SQL_ALLOWED = {
    Path("federation/triggers.py"),
    Path("accounting/triggers.py"),
    Path("accounting/dbtriggers.py"),
}
SQL = re.compile(r"SELECT|INSERT INTO|UPDATE .* SET")


def modules():
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts or "__pycache__" in path.parts:
                continue
            yield path.relative_to(ROOT)


def test_no_module_is_over_the_line_limit():
    long = {
        str(path): n
        for path in modules()
        if path.name not in LONG_ALLOWED
        and (n := len((ROOT / path).read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules over {MAX_LINES} lines (split them along their seams): {long}"


def test_no_sql_strings_outside_the_trigger_installers():
    found = []
    for path in modules():
        if path in SQL_ALLOWED:
            continue
        for number, line in enumerate((ROOT / path).read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if SQL.search(code) and not code.lstrip().startswith(('"""', "'''")):
                found.append(f"{path}:{number}: {line.strip()}")
    assert found == [], "SQL strings outside the trigger installers (use the ORM):\n" + "\n".join(found)


def test_the_rule_checks_above_see_a_violation(tmp_path, monkeypatch):
    """The two scans are not vacuous: a planted long module and a planted SQL string fail them."""
    app = tmp_path / "federation"
    app.mkdir()
    (app / "big.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
    (app / "raw.py").write_text('Q = "SELECT id FROM federation_agreement"\n', encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "APPS", ("federation",))
    with pytest.raises(AssertionError, match="big.py"):
        test_no_module_is_over_the_line_limit()
    with pytest.raises(AssertionError, match="raw.py:1"):
        test_no_sql_strings_outside_the_trigger_installers()

