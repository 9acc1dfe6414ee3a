"""fedgov settings, all read from the environment.

FEDGOV_ENV selects the profile: `development` (the default: SQLite, a generated local secret
key), `production` (refuses to start without SECRET_KEY and ALLOWED_HOSTS, HTTPS-only
cookies, HSTS) or `test` (set by fedgov.settings_test). Every value has a typed reader that
fails loudly on a malformed value instead of guessing.
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str | None:
    """A string from NAME, or from the file named by NAME_FILE (for secrets mounted as files)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_name!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


FEDGOV_ENV = os.environ.get("FEDGOV_ENV", "development")
if FEDGOV_ENV not in ("development", "production", "test"):
    raise ImproperlyConfigured(
        f"FEDGOV_ENV must be development, production or test, got {FEDGOV_ENV!r}"
    )
PRODUCTION = FEDGOV_ENV == "production"

VAR_DIR = Path(env_str("FEDGOV_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set when FEDGOV_ENV=production"
        )
    # Development: generate a key once and keep it in an ignored local file, so sessions
    # survive restarts without anyone committing a secret.
    path = BASE_DIR / ".local-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when FEDGOV_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "federation",
    "accounting",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "fedgov.middleware.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language: the cookie set_language writes, else the browser's Accept-Language.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): whether this session passed a one-time password.
    "django_otp.middleware.OTPMiddleware",
    # Sends a session that owes a second factor back to the login (federation.twofactor).
    "federation.twofactor.SecondFactorMiddleware",
    # A signed-in user's stored language wins over the cookie and the browser (federation.i18n).
    "federation.i18n.UserLanguageMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fedgov.urls"
WSGI_APPLICATION = "fedgov.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'fedgov.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Writers wait for each other instead of failing at once; the ledger serialises
    # reservations with its own row locks on PostgreSQL, and SQLite's database lock here.
    # WAL: readers (agents' polls, pages) neither block nor wait for the one writer, and a
    # commit is one fsync of the log (synchronous stays FULL: a commit survives power loss).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# The UI speaks English and French (docs/I18N.md). LANGUAGE_CODE is the fallback when neither
# the user's stored choice, the language cookie nor Accept-Language names one of LANGUAGES.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
LANGUAGE_COOKIE_NAME = "fedgov_language"
LANGUAGE_COOKIE_SAMESITE = "Lax"
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Security -------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)

# --- Celery ---------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "fedgov.default"
CELERY_TASK_ROUTES = {
    "fedgov.rounds.*": {"queue": "fedgov.rounds"},
    "fedgov.aggregation.*": {"queue": "fedgov.aggregation"},
    "fedgov.deadlines.*": {"queue": "fedgov.deadlines"},
}
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A web request that enqueues a task must not hang on a broker that is down: a few quick
# retries, then the error. Work whose task was lost is re-driven by the beat sweep.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}
CELERY_BROKER_CONNECTION_TIMEOUT = 4
CELERY_TASK_IGNORE_RESULT = True  # tasks write their outcome to the database, not to Redis
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULE = {
    "close-expired-phases": {
        "task": "fedgov.deadlines.sweep",
        "schedule": float(env_int("FEDGOV_DEADLINE_SWEEP_SECONDS", 5)),
    },
    # Notifications whose task was lost, or whose worker died mid-send (notifications/tasks.py).
    "notifications-sweep": {
        "task": "fedgov.notifications.sweep",
        "schedule": float(env_int("FEDGOV_NOTIFY_SWEEP_SECONDS", 15)),
    },
    "notifications-verify-ledgers": {
        "task": "fedgov.notifications.verify_ledgers",
        "schedule": float(env_int("FEDGOV_LEDGER_CHECK_SECONDS", 3600)),
    },
}

# --- Cache, trusted proxies, login throttles -------------------------------------------------
# The throttles count failures in the cache, so every web process must share it: production
# keeps the counts in Redis (CACHE_URL, by default REDIS_URL); development and the tests use
# each process's memory.
CACHE_URL = env_str("CACHE_URL") or REDIS_URL
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL, "KEY_PREFIX": "fedgov"}
        if PRODUCTION or env_bool("CACHE_REDIS", False)
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
# How long the API keeps a token's row (token, user, role groups) in the cache
# (federation/token_cache.py); every change to them marks it stale at once. Only a cache
# shared by every web process (Redis) carries that mark to the others, so with each process's
# memory (development, the tests) the default is 0: read the database on every request.
FEDGOV_API_TOKEN_CACHE_SECONDS = env_int("FEDGOV_API_TOKEN_CACHE_SECONDS", 30 if "redis" in CACHES["default"]["BACKEND"] else 0)
if FEDGOV_API_TOKEN_CACHE_SECONDS < 0:
    raise ImproperlyConfigured(f"FEDGOV_API_TOKEN_CACHE_SECONDS must be 0 or more, got {FEDGOV_API_TOKEN_CACHE_SECONDS}")
# How many reverse proxies in front of fedgov append to X-Forwarded-For. 0 (the default): the
# header is ignored and the client is the connection's address. N: the Nth address from the
# right of X-Forwarded-For, the one the outermost trusted proxy saw (DRF's NUM_PROXIES).
NUM_PROXIES = env_int("NUM_PROXIES", 0)
if NUM_PROXIES < 0:
    raise ImproperlyConfigured(f"NUM_PROXIES must be 0 or more, got {NUM_PROXIES}")
# Wrong passwords (web login, admin login, the API's password exchange) allowed per client and
# per username before both are refused, even the right password, until the lockout ends.
FEDGOV_LOGIN_FAILURE_LIMIT = env_int("FEDGOV_LOGIN_FAILURE_LIMIT", 10)
FEDGOV_LOGIN_LOCKOUT_MINUTES = env_int("FEDGOV_LOGIN_LOCKOUT_MINUTES", 15)
# A partner agent is online when it polled within this many seconds: twice the longest
# long-poll wait (25 s) and a margin. An offline partner is left out of a round at its start.
FEDGOV_AGENT_ONLINE_SECONDS = env_int("FEDGOV_AGENT_ONLINE_SECONDS", 60)
if FEDGOV_LOGIN_FAILURE_LIMIT < 1 or FEDGOV_LOGIN_LOCKOUT_MINUTES < 1:
    raise ImproperlyConfigured("FEDGOV_LOGIN_FAILURE_LIMIT and FEDGOV_LOGIN_LOCKOUT_MINUTES must be 1 or more")

# --- Email, passwords, second factor ---------------------------------------------------------
# Django's standard EMAIL_* names, for password reset mails and notifications: set with the
# notification settings below.
# A password reset link is valid this long (Django's default is three days).
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 3 * 3600)
# true: an administrator (the administrators group, or a superuser) signs in with a time-based
# one-time password after the password, on /accounts/login/ and /admin/login/, and enrols a
# device at the first sign-in. Anyone who enrolled a device is asked for its code regardless.
# API tokens are not affected: a token is its own credential (docs/ACCOUNTS.md).
FEDGOV_REQUIRE_ADMIN_2FA = env_bool("FEDGOV_REQUIRE_ADMIN_2FA", False)
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "fedgov")

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "federation.api.auth.ScopedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "federation.api.errors.exception_handler",
    # login: every password exchange per client; failed_auth: invalid tokens per client.
    "DEFAULT_THROTTLE_RATES": {"login": "10/min", "failed_auth": "20/min"},
    "NUM_PROXIES": NUM_PROXIES,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "fedgov API",
    "DESCRIPTION": "Governance and privacy-budget control plane for cross-silo federated learning.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Tags from the first path segment after /api/v1/ (agreements, datasets, plans, rounds,
    # agent, ...): one group per resource in the docs, not every operation under "v1".
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "TAGS": [
        {"name": "index", "description": "The list of the API's resources."},
        {"name": "health", "description": "Liveness of the control plane."},
        {"name": "auth", "description": "Obtain an API token with a username and password."},
        {"name": "tokens", "description": "Your API tokens: list, revoke."},
        {"name": "organisations", "description": "Partner organisations."},
        {"name": "memberships", "description": "Who holds which role at which organisation."},
        {"name": "agreements", "description": "Agreements: draft, submit, sign, amend, exit notice."},
        {"name": "datasets", "description": "Registered datasets, their budgets and hash-chained ledgers."},
        {"name": "plans", "description": "Training plans and their rounds."},
        {"name": "rounds", "description": "Rounds: participants, approvals and rejections."},
        {"name": "events", "description": "The governance history."},
        {"name": "model-versions", "description": "Model versions produced by completed rounds."},
        {"name": "agent", "description": "The partner agent's protocol endpoints."},
    ],
    # One named enum for the notification kinds, wherever a field carries them.
    "ENUM_NAME_OVERRIDES": {"NotificationKindEnum": "notifications.models.Kind.values"},
}

# --- fedgov ---------------------------------------------------------------------------------
FEDGOV_LEDGER_KEY_FILE = Path(env_str("FEDGOV_LEDGER_KEY_FILE", str(VAR_DIR / "ledger_ed25519.pem")))
FEDGOV_MODEL_DIR = Path(env_str("FEDGOV_MODEL_DIR", str(VAR_DIR / "models")))
FEDGOV_MAX_UPLOAD_BYTES = env_int("FEDGOV_MAX_UPLOAD_BYTES", 64 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = FEDGOV_MAX_UPLOAD_BYTES

# --- Notifications: email and webhooks -------------------------------------------------------
# SMTP when EMAIL_HOST is set (or in production, which then requires it); otherwise the
# console backend prints each message (development). The test runner swaps in its own.
EMAIL_HOST = env_str("EMAIL_HOST", "") or ""
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: set one")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "fedgov <fedgov@localhost>")
# Production without EMAIL_HOST hands mail to the machine's own MTA (localhost:25, Django's
# default); a refused send is retried and shows in the delivery log, never dropped.
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST or PRODUCTION else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST = EMAIL_HOST or "localhost"
# Links in emails and webhook bodies are absolute: the address people reach fedgov at.
FEDGOV_PUBLIC_URL = env_str("FEDGOV_PUBLIC_URL", "http://127.0.0.1:8000")
FEDGOV_EMAIL_MESSAGE_ID_DOMAIN = env_str("FEDGOV_EMAIL_MESSAGE_ID_DOMAIN", "fedgov.invalid")
FEDGOV_WEBHOOK_CONNECT_TIMEOUT = env_int("FEDGOV_WEBHOOK_CONNECT_TIMEOUT", 5)
FEDGOV_WEBHOOK_TIMEOUT = env_int("FEDGOV_WEBHOOK_TIMEOUT", 10)
# Webhooks to private, loopback or link-local addresses: refused in production.
FEDGOV_WEBHOOK_ALLOW_PRIVATE = env_bool("FEDGOV_WEBHOOK_ALLOW_PRIVATE", not PRODUCTION)
FEDGOV_NOTIFY_MAX_ATTEMPTS = env_int("FEDGOV_NOTIFY_MAX_ATTEMPTS", 8)
FEDGOV_NOTIFY_BACKOFF_SECONDS = env_int("FEDGOV_NOTIFY_BACKOFF_SECONDS", 30)
FEDGOV_NOTIFY_BACKOFF_MAX_SECONDS = env_int("FEDGOV_NOTIFY_BACKOFF_MAX_SECONDS", 3600)
FEDGOV_NOTIFY_SWEEP_GRACE_SECONDS = env_int("FEDGOV_NOTIFY_SWEEP_GRACE_SECONDS", 10)
# A claimed delivery belongs to its worker for this long. It must outlast the longest send
# (the timeouts bound it), so that only a dead worker's claim ever runs out.
FEDGOV_NOTIFY_LEASE_SECONDS = env_int("FEDGOV_NOTIFY_LEASE_SECONDS", 120)
if FEDGOV_NOTIFY_LEASE_SECONDS <= max(FEDGOV_WEBHOOK_CONNECT_TIMEOUT + FEDGOV_WEBHOOK_TIMEOUT, EMAIL_TIMEOUT):
    raise ImproperlyConfigured(
        "FEDGOV_NOTIFY_LEASE_SECONDS must exceed the send timeouts (FEDGOV_WEBHOOK_CONNECT_TIMEOUT + "
        "FEDGOV_WEBHOOK_TIMEOUT, and EMAIL_TIMEOUT), or a live worker could lose its claim mid-send"
    )
if FEDGOV_NOTIFY_MAX_ATTEMPTS < 1 or FEDGOV_NOTIFY_BACKOFF_SECONDS < 0:
    raise ImproperlyConfigured("FEDGOV_NOTIFY_MAX_ATTEMPTS must be 1 or more, FEDGOV_NOTIFY_BACKOFF_SECONDS 0 or more")

class _ExpectedForbidden:
    """A 403 is an answer, not a fault: someone opened a page their role does not allow. Django
    logs it as a WARNING with the whole traceback; log it as one INFO line instead."""

    def filter(self, record) -> bool:
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = 20, "INFO"  # logging.INFO
        return True


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"expected_forbidden": {"()": _ExpectedForbidden}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.request": {"filters": ["expected_forbidden"]},
        # dp-accounting logs every RDP order whose series does not converge (it excludes
        # them, correctly); one line per order per event is noise in an operator's log.
        "absl": {"level": "ERROR"},
    },
}
