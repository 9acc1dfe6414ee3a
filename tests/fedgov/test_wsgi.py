"""The WSGI entry point warms a worker before gunicorn lets it accept a connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import fedgov.wsgi
from django.db import connections
from django.urls import get_resolver
from django.utils.translation import trans_real
print(json.dumps({
    "urls_imported": "fedgov.urls" in sys.modules,
    "api_views_imported": "federation.api.rounds" in sys.modules and "federation.api.ledger" in sys.modules,
    "reverse_tables_built": get_resolver()._populated,
    "catalogues": sorted(trans_real._translations),
    "connections_opened": [alias for alias in connections if connections[alias].connection is not None],
}))
"""


def test_importing_the_entry_point_loads_urls_views_and_catalogues_and_opens_no_connection(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="fedgov.settings", FEDGOV_ENV="development", FEDGOV_VAR_DIR=str(tmp_path), DEBUG="false")
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    # The first request of a fresh worker pays none of this (bench/api_load.py's tail).
    assert state["urls_imported"] and state["api_views_imported"] and state["reverse_tables_built"]
    assert {"en", "fr"} <= set(state["catalogues"])
    # Nothing a fork would share: gunicorn --preload forks after this import.
    assert state["connections_opened"] == []
