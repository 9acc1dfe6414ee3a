"""The API's token lookup: the token, its user and the user's role groups, kept in Django's
cache (Redis in production) for `FEDGOV_API_TOKEN_CACHE_SECONDS`.

Every API request starts with this lookup. Read with the ORM (select_related and one
`Exists` per role group) it costs Django's query compiler about a millisecond, a third of a
request; from the cache, a single `get`. The cache only saves the reading: the token's
revocation and expiry are checked on every request against the row, and every change that
could make a cached row wrong replaces the entry with a *stale* marker at once:

* the token saved or deleted (signals), or revoked (`token_revoke` updates in bulk and calls
  `forget_tokens` itself);
* its user saved (deactivated, made a superuser, renamed ...) or deleted;
* its user's groups changed, from either side, or a group renamed or deleted.

A stale marker makes the next requests read the database, and is never overwritten by a
lookup (`cache.add`): a request that read the row just before a revocation cannot put the old
row back. It is set again when the change commits, so it outlives a long transaction.

The entries are shared by every web process only through a shared cache; with a cache in
each process's memory (development), a change made in one process would not reach the
others before the entries expire, so the setting defaults to 0 (no caching) there (settings).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import router, transaction
from django.db.models import Exists, OuterRef
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from .access import ROLE_GROUPS, remember_role_groups
from .models import ApiToken

STALE = "stale"
LAST_USED_EVERY = 60  # seconds
_ROLE_FIELDS = {f"_fedgov_in_role_group_{i}": name for i, name in enumerate(ROLE_GROUPS)}


def _cache_key(key_hash: str) -> str:
    return f"apitoken:v1:{key_hash}"


def _ttl() -> int:
    return settings.FEDGOV_API_TOKEN_CACHE_SECONDS


def _read(key_hash: str) -> ApiToken | None:
    """The token with its user and role groups, from the database: one query."""
    roles = {
        field: Exists(Group.objects.filter(user=OuterRef("user_id"), name=name)) for field, name in _ROLE_FIELDS.items()
    }
    try:
        token = ApiToken.objects.select_related("user").annotate(**roles).get(key_hash=key_hash)
    except ApiToken.DoesNotExist:
        return None
    remember_role_groups(token.user, [name for field, name in _ROLE_FIELDS.items() if getattr(token, field)])
    return token


def _row(token: ApiToken) -> tuple[dict, dict, list[str]]:
    user = token.user
    return (
        {f.attname: getattr(token, f.attname) for f in ApiToken._meta.concrete_fields},
        {f.attname: getattr(user, f.attname) for f in user._meta.concrete_fields},
        sorted(user._fedgov_groups),
    )


def _from_row(row) -> ApiToken:
    token_fields, user_fields, groups = row
    db = router.db_for_read(ApiToken)
    token = ApiToken.from_db(db, list(token_fields), list(token_fields.values()))
    user = get_user_model().from_db(db, list(user_fields), list(user_fields.values()))
    remember_role_groups(user, groups)
    token.user = user
    return token


def find_token(key_hash: str) -> ApiToken | None:
    """The token whose key hashes to `key_hash`, with its user (whose role groups are
    remembered for `federation.access`), or None; revoked and expired tokens included (the
    caller checks). From the cache, or one query."""
    ttl = _ttl()
    if ttl <= 0:
        return _read(key_hash)
    key = _cache_key(key_hash)
    row = cache.get(key)
    if row is not None and row != STALE:
        return _from_row(row)
    token = _read(key_hash)
    if token is not None and row is None:
        cache.add(key, _row(token), ttl)  # never over a stale marker
    return token


def forget_tokens(key_hashes: Iterable[str]) -> None:
    """Mark these tokens' cached rows stale: now, and again when the current transaction
    commits (a request reading the old row in between cannot cache it past the marker)."""
    keys = [_cache_key(h) for h in key_hashes]
    ttl = _ttl()
    if not keys or ttl <= 0:
        return

    def mark() -> None:
        # The marker lives twice as long as an entry: longer than any entry read before it.
        cache.set_many(dict.fromkeys(keys, STALE), 2 * ttl)

    mark()
    transaction.on_commit(mark)


def record_use(token: ApiToken, now) -> None:
    """Write the token's `last_used_at`, at most once a minute (a cached row may carry an older
    time than the database's: the cache then remembers the write instead)."""
    if token.last_used_at is not None and (now - token.last_used_at).total_seconds() <= LAST_USED_EVERY:
        return
    if _ttl() > 0 and not cache.add(f"apitoken:used:{token.key_hash}", 1, LAST_USED_EVERY):
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


def forget_users_tokens(user_ids: Iterable[int]) -> None:
    ids = [pk for pk in user_ids if pk is not None]
    if ids:
        forget_tokens(ApiToken.objects.filter(user_id__in=ids).values_list("key_hash", flat=True))


# --- Signals: every change that could make a cached row wrong ------------------------------------


def _token_changed(sender, instance: ApiToken, created: bool = False, **kwargs) -> None:
    if not created:  # a new token has nothing cached yet
        forget_tokens([instance.key_hash])


def _user_changed(sender, instance, **kwargs) -> None:
    forget_users_tokens([instance.pk])


def _groups_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    if action not in ("post_add", "post_remove", "pre_clear"):
        return
    if not reverse:  # user.groups.add(...): `instance` is the user
        forget_users_tokens([instance.pk])
    elif pk_set is not None:  # group.user_set.add(...): `pk_set` holds the users
        forget_users_tokens(pk_set)
    else:  # group.user_set.clear()
        forget_users_tokens(instance.user_set.values_list("pk", flat=True))


def _group_changed(sender, instance: Group, **kwargs) -> None:
    if instance.pk is not None:
        forget_users_tokens(instance.user_set.values_list("pk", flat=True))


def connect_signals() -> None:
    """Called once, from FederationConfig.ready."""
    user_model = get_user_model()
    post_save.connect(_token_changed, sender=ApiToken, dispatch_uid="token_cache_token_saved")
    post_delete.connect(_token_changed, sender=ApiToken, dispatch_uid="token_cache_token_deleted")
    post_save.connect(_user_changed, sender=user_model, dispatch_uid="token_cache_user_saved")
    pre_delete.connect(_user_changed, sender=user_model, dispatch_uid="token_cache_user_deleted")
    m2m_changed.connect(_groups_changed, sender=user_model.groups.through, dispatch_uid="token_cache_groups")
    post_save.connect(_group_changed, sender=Group, dispatch_uid="token_cache_group_saved")
    pre_delete.connect(_group_changed, sender=Group, dispatch_uid="token_cache_group_deleted")
