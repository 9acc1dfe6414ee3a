"""Token authentication with hashed keys, scopes and expiry (`Authorization: Token <key>`),
and the throttles that keep password and token guessing slow."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections, router
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions, throttling
from rest_framework.settings import api_settings

from fedgov.throttles import FailureLimit, client_ident

from ..access import ROLE_GROUPS, remember_role_groups
from ..models import ApiToken

# Scopes (ApiToken.Scope): `read` for every GET, `trigger` to request a round, `approve` for
# governance decisions (sign, approve, reject, exit notice, and the administrator's writes).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class FailedAuthThrottle:
    """Refuses a client that sent too many invalid tokens: the `failed_auth` rate (settings,
    20/min) per client, the client as `NUM_PROXIES` identifies it (fedgov.throttles).

    Only failures count, so a well-behaved client is never slowed down, and a guesser is
    stopped (429) before its next guess is even looked up. The counter lives in Django's
    cache, shared by every web process in production (Redis).
    """

    scope = "failed_auth"

    def __init__(self) -> None:
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope) or "20/min"
        limit, window = throttling.SimpleRateThrottle.parse_rate(None, rate)
        self.failures = FailureLimit("token", limit, window)

    def check(self, request) -> None:
        wait = self.failures.wait([("client", client_ident(request))])
        if wait:
            raise exceptions.Throttled(wait=wait)

    def record_failure(self, request) -> None:
        self.failures.record([("client", client_ident(request))])


class LoginThrottle(throttling.ScopedRateThrottle):
    """The scoped throttle of the password endpoints (`throttle_scope = "login"`), per
    client: a password guesser gets 429 after the `login` rate (settings, 10/min). Wrong
    passwords are also counted per client and per username (fedgov.throttles)."""

    def get_cache_key(self, request, view):
        # Per client even when the request carries a session: the password is what is guessed.
        return self.cache_format % {"scope": self.scope, "ident": client_ident(request)}


class ScopedTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"
    failed_auth_throttle_class = FailedAuthThrottle

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        throttle = self.failed_auth_throttle_class()
        throttle.check(request)
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            throttle.record_failure(request)
            raise

    def authenticate_credentials(self, key: str):
        token = find_token(ApiToken.hash_key(key))
        if token is None or not token.is_valid():
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user is inactive.")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token


# --- The token lookup -----------------------------------------------------------------------
#
# Every API request starts with the token lookup, so it is one hand-written query: the token,
# its user and whether the user is in each of ROLE_GROUPS (which the permission checks that
# follow need). Written with the ORM (select_related + annotate(Exists(...))) the same query
# cost Django's compiler about a third of a request's CPU. The SQL is built once per database
# from the models' own table and column names, and the rows go through the same database
# converters the ORM applies (text to datetime on SQLite, JSON text to a list, ...).
#
# Nothing is cached between requests but the SQL text: the row is read fresh every time, so
# a revoked or expired token, or a deactivated user, is refused on its very next request.

_TOKEN_SQL: dict[str, tuple[str, list, list]] = {}


def _token_sql(connection) -> tuple[str, list, list]:
    """(sql, token columns, user columns) for `connection`'s database, built once."""
    built = _TOKEN_SQL.get(connection.alias)
    if built is None:
        qn = connection.ops.quote_name
        user_model = get_user_model()
        memberships = user_model._meta.get_field("groups").remote_field.through._meta
        token_cols = [f.get_col("t") for f in ApiToken._meta.concrete_fields]
        user_cols = [f.get_col("u") for f in user_model._meta.concrete_fields]
        in_group = (
            f"EXISTS (SELECT 1 FROM {qn(memberships.db_table)} ug INNER JOIN {qn(Group._meta.db_table)} g"
            f" ON g.{qn(Group._meta.pk.column)} = ug.{qn(memberships.get_field('group').column)}"
            f" WHERE ug.{qn(memberships.get_field('user').column)} = t.{qn(ApiToken._meta.get_field('user').column)}"
            f" AND g.{qn(Group._meta.get_field('name').column)} = %s)"
        )
        columns = [f"{c.alias}.{qn(c.target.column)}" for c in token_cols + user_cols] + [in_group] * len(ROLE_GROUPS)
        sql = (
            f"SELECT {', '.join(columns)} FROM {qn(ApiToken._meta.db_table)} t"
            f" INNER JOIN {qn(user_model._meta.db_table)} u"
            f" ON u.{qn(user_model._meta.pk.column)} = t.{qn(ApiToken._meta.get_field('user').column)}"
            f" WHERE t.{qn(ApiToken._meta.get_field('key_hash').column)} = %s"
        )
        built = _TOKEN_SQL[connection.alias] = (sql, token_cols, user_cols)
    return built


def _converted(connection, cols: list, values) -> list:
    """`values` as the ORM would return them: each through its column's database converters."""
    out = []
    for col, value in zip(cols, values, strict=True):
        for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
            value = convert(value, col, connection)
        out.append(value)
    return out


def find_token(key_hash: str) -> ApiToken | None:
    """The token whose key hashes to `key_hash`, with its user (whose role groups are
    remembered for `federation.access`), or None. One query."""
    db = router.db_for_read(ApiToken)
    connection = connections[db]
    sql, token_cols, user_cols = _token_sql(connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*ROLE_GROUPS, key_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    n_token, n_user = len(token_cols), len(user_cols)
    token = ApiToken.from_db(db, [c.target.attname for c in token_cols], _converted(connection, token_cols, row[:n_token]))
    user = get_user_model().from_db(
        db, [c.target.attname for c in user_cols], _converted(connection, user_cols, row[n_token : n_token + n_user])
    )
    remember_role_groups(user, [name for name, member in zip(ROLE_GROUPS, row[n_token + n_user :], strict=True) if member])
    token.user = user
    return token


def token_scopes(request) -> set[str] | None:
    """The scopes of the request's token, or None for a session (a person in a browser)."""
    auth = getattr(request, "auth", None)
    return set(auth.scopes) if isinstance(auth, ApiToken) else None


def required_scope(request, view) -> str | None:
    """The scope `view` needs for this request: its `required_scope` (one name, or a mapping
    of method to name); reads need `read` unless said otherwise. None: a write whose view
    declared nothing, which a token may never do (fail closed)."""
    needed = getattr(view, "required_scope", None)
    if isinstance(needed, dict):
        needed = needed.get(request.method)
    if needed is None and request.method in SAFE_METHODS:
        needed = ApiToken.Scope.READ
    return needed


class HasScope(permissions.BasePermission):
    """A token must carry the scope the view needs; a session user (a person) passes."""

    message = "This token lacks the scope this operation needs."

    def has_permission(self, request, view) -> bool:
        scopes = token_scopes(request)
        if scopes is None:
            return True
        needed = required_scope(request, view)
        if needed is None:
            self.message = "Tokens cannot do this operation; sign in instead."
            return False
        if needed not in scopes:
            self.message = f"This token lacks the '{needed}' scope."
            return False
        return True
