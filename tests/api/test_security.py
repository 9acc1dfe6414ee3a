"""Security settings and headers: `check --deploy` is clean in production, every answer
carries the security headers, HTTPS is enforced (HSTS) in production, and the API docs work
offline under a script-src 'self' policy."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from fedgov.middleware import DOCS_CONTENT_SECURITY_POLICY

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DEBUG", "SECURE_SSL_REDIRECT", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update(
        FEDGOV_ENV="production",
        DJANGO_SETTINGS_MODULE="fedgov.settings",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="fedgov.example.org",
        FEDGOV_VAR_DIR=str(tmp_path),
    )
    return env


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


PROBE = """
import json, django
django.setup()
from django.test import Client
c = Client()
plain = c.get("/api/v1/health/", HTTP_HOST="fedgov.example.org")
tls = c.get("/api/v1/health/", HTTP_HOST="fedgov.example.org", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "plain_status": plain.status_code, "plain_location": plain.get("Location"),
    "tls_status": tls.status_code, "tls_headers": dict(tls.headers), "plain_hsts": plain.get("Strict-Transport-Security"),
}))
"""


def test_production_redirects_to_https_and_sends_hsts_over_tls(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=production_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["plain_status"] == 301
    assert probe["plain_location"] == "https://fedgov.example.org/api/v1/health/"
    assert probe["plain_hsts"] is None  # HSTS only over TLS (RFC 6797)
    assert probe["tls_status"] == 200
    hsts = probe["tls_headers"]["Strict-Transport-Security"]
    assert re.fullmatch(r"max-age=\d+; includeSubDomains; preload", hsts)
    assert int(hsts.split("=")[1].split(";")[0]) >= 31536000


@pytest.mark.parametrize("path", ["/api/v1/health/", "/api/v1/agreements/", "/api/v1/nothing-here/", "/api/schema/"])
def test_every_api_answer_carries_the_security_headers(db, path):
    response = Client().get(path)
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_an_unknown_api_url_answers_with_the_json_error_body(db):
    response = Client().get("/api/v1/rounds/not-a-number/")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "Not found.", "details": {}}


# --- the API docs ---------------------------------------------------------------------------


def test_the_docs_render_from_local_files_only(db):
    client = Client()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<script>" not in html, "an inline script would need 'unsafe-inline'"
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources, html
    for url in sources:
        assert not re.match(r"^(https?:)?//", url), f"the docs page loads {url} from elsewhere"
        if url.startswith("/static/"):
            assert finders.find(url.removeprefix("/static/")), f"{url} is not a static file we ship"
    assert any("swagger-ui-bundle.js" in url for url in sources)
    script_url = next(url for url in sources if "script=" in url)
    script = client.get(script_url.replace("&amp;", "&"))
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "/api/schema/" in script.content.decode()
    assert not re.search(r"https?://(?!localhost|testserver)", script.content.decode())


def test_the_docs_get_their_own_policy_and_scripts_stay_self_only(db):
    response = Client().get("/api/docs/")
    csp = response["Content-Security-Policy"]
    assert csp == DOCS_CONTENT_SECURITY_POLICY
    script_src = re.search(r"script-src ([^;]+)", csp).group(1).split()
    assert script_src == ["'self'"]
    assert "unsafe-inline" not in Client().get("/api/schema/")["Content-Security-Policy"]
