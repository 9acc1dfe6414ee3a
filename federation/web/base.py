"""What every web view shares: the login and 404/403 wrapper, and `attempt`, the one adapter
that turns a service's refusal into form errors or a message and a redirect."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _

from fedgov.errors import ApplicationError, NotFound, PermissionDenied, ValidationFailed

from .. import access


def _translated(message: str) -> str:
    # The message in the user's language when the catalogue has it (gettext("") would be the
    # catalogue's header).
    return _(message) if message else message


def web_view(view):
    """Login required; domain NotFound/PermissionDenied become the 404/403 pages."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(_translated(exc.message)) from exc
        except PermissionDenied as exc:
            raise DjangoPermissionDenied(_translated(exc.message)) from exc

    return login_required(wrapper)


def role_context(user) -> dict:
    return {"is_admin": access.is_administrator(user), "is_auditor": access.is_auditor(user)}


def posted(request):
    """The POST data for a bound form, even when empty (an unticked checkbox sends nothing,
    and an empty QueryDict is falsy: `request.POST or None` would skip validation)."""
    return request.POST if request.method == "POST" else None


def safe_target(request, target: str, default: str) -> str:
    """`target` if it is a URL of this site, else `default` (no open redirect)."""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def safe_next(request, default: str) -> str:
    return safe_target(request, request.POST.get("next") or "", default)


# --- The adapter: a service's refusal on the page ---------------------------------------------


@dataclass
class Attempt:
    """What `attempt` did: the service's result, or its refusal and (when the refusal went to
    a message) the redirect to answer with."""

    value: Any = None
    refusal: ApplicationError | None = None
    response: HttpResponse | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None


def show_refusal(form, exc: ApplicationError, field_map: dict[str, str] | None = None) -> None:
    """A refusal on `form`: each field's messages next to that field (renamed by `field_map`),
    the rest (or a refusal naming no field) at the top of the form."""
    field_map = field_map or {}
    fields = (exc.details or {}).get("fields") or {}
    if not fields:
        form.add_error(None, exc.message)
        return
    for name, texts in fields.items():
        if isinstance(texts, str):
            texts = [texts]
        target = field_map.get(name, name)
        if target in form.fields:
            for text in texts:
                form.add_error(target, text)
        else:
            label = "" if name == "__all__" else f"{name.replace('_', ' ')}: "
            for text in texts:
                form.add_error(None, f"{label}{text}")


def attempt(
    request,
    service,
    /,
    *,
    form=None,
    field_map: dict[str, str] | None = None,
    back: str | None = None,
    guard_field: str | None = None,
    **kwargs,
) -> Attempt:
    """Call `service(**kwargs)` and say on the page why it refused, if it did.

    * NotFound and PermissionDenied pass through (`web_view` answers 404 or 403), unless
      `guard_field` names the form field whose choice the guard refused (then they land there).
    * A refusal naming fields, or any ValidationFailed, lands on `form` when there is one:
      each field's message next to that field (`show_refusal`).
    * Any other refusal (wrong state, budget exceeded...) becomes an error message and a
      redirect to `back` when it is given; otherwise it lands at the top of `form`; with
      neither, it is only the error message.

    The caller answers `result.response` when it is set, and re-renders the form otherwise.
    A refusal writes nothing: the services check before they write."""
    try:
        return Attempt(value=service(**kwargs))
    except (NotFound, PermissionDenied) as exc:
        if form is None or guard_field is None:
            raise
        form.add_error(guard_field, exc.message)
        return Attempt(refusal=exc)
    except ApplicationError as exc:
        names_fields = bool((exc.details or {}).get("fields"))
        if form is not None and (names_fields or isinstance(exc, ValidationFailed) or back is None):
            show_refusal(form, exc, field_map)
            return Attempt(refusal=exc)
        messages.error(request, exc.message)
        return Attempt(refusal=exc, response=redirect(back) if back is not None else None)
