"""Settings for the test suite: the real settings, with fast password hashing and a private
var directory per run. DATABASE_URL and REDIS_URL still come from the environment, so the
same suite runs on SQLite and on PostgreSQL."""

import os
import tempfile

os.environ.setdefault("FEDGOV_ENV", "test")
os.environ.setdefault("FEDGOV_VAR_DIR", tempfile.mkdtemp(prefix="fedgov-test-var-"))

from fedgov.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: integration and concurrency tests share the test database with
    # the worker, web and agent processes they start.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
