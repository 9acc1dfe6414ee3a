"""The agreements each user sees (`access.visible_agreement_ids` for the API), kept in Django's
cache next to the API's token rows and for as long (`FEDGOV_API_TOKEN_CACHE_SECONDS`; 0, the
default outside a shared cache, keeps nothing).

Reading the set is one UNION query whose compilation by the ORM costs about as much as the
rest of a small API request; from the cache it is a single `get`. The rule is the token
cache's (federation/token_cache.py): every change that could make a cached set wrong marks it
*stale* at once and again when its transaction commits, and a lookup never writes over a
stale marker (`cache.add`), so a request that read the set just before the change cannot put
it back. The changes that move a user's set:

* a membership saved or deleted (the user joins or leaves an organisation);
* a party of an agreement saved or deleted (every member of its organisation);
* an agreement's auditors changed, from either side (the users added or removed).

Seeing an agreement is not being allowed to act on it: every write is still decided by
`federation.access` against the database, inside the service's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from .models import Agreement, AgreementParty, Membership

STALE = "stale"


def _key(user_id: int) -> str:
    return f"visible-agreements:v1:{user_id}"


def _ttl() -> int:
    return settings.FEDGOV_API_TOKEN_CACHE_SECONDS


def visible_ids(user_id: int, read: Callable[[], list[int]]) -> list[int]:
    """The user's visible agreement ids: from the cache, or `read()` (then cached unless a
    change marked the entry stale meanwhile)."""
    ttl = _ttl()
    if ttl <= 0:
        return read()
    key = _key(user_id)
    cached = cache.get(key)
    if cached is not None and cached != STALE:
        return list(cached)
    ids = read()
    if cached is None:
        cache.add(key, list(ids), ttl)  # never over a stale marker
    return ids


def forget(user_ids: Iterable[int]) -> None:
    """Mark these users' cached sets stale: now, and again when the current transaction commits."""
    keys = [_key(pk) for pk in set(user_ids) if pk is not None]
    ttl = _ttl()
    if not keys or ttl <= 0:
        return

    def mark() -> None:
        cache.set_many(dict.fromkeys(keys, STALE), 2 * ttl)  # outlives any entry read before it

    mark()
    transaction.on_commit(mark)


def _membership_changed(sender, instance: Membership, **kwargs) -> None:
    forget([instance.user_id])


def _party_changed(sender, instance: AgreementParty, **kwargs) -> None:
    forget(Membership.objects.filter(organisation_id=instance.organisation_id).values_list("user_id", flat=True))


def _auditors_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    if not action.startswith("post_") and action != "pre_clear":
        return
    if reverse:  # user.audited_agreements changed: that user
        forget([instance.pk])
    elif pk_set:
        forget(pk_set)
    else:  # agreement.auditors.clear(): everyone who audited it (read before the clear)
        forget(instance.auditors.values_list("pk", flat=True))


def connect_signals() -> None:
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="visibility_membership_saved")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="visibility_membership_deleted")
    post_save.connect(_party_changed, sender=AgreementParty, dispatch_uid="visibility_party_saved")
    post_delete.connect(_party_changed, sender=AgreementParty, dispatch_uid="visibility_party_deleted")
    m2m_changed.connect(_auditors_changed, sender=Agreement.auditors.through, dispatch_uid="visibility_auditors")
