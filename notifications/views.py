"""Web pages of notifications: your inbox (/notifications/) and your preferences."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext, ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from federation.web.base import role_context, web_view

from . import selectors, services
from .models import Kind


@web_view
@require_GET
def notification_list(request):
    unread_only = request.GET.get("unread") == "1"
    items = selectors.notifications_for(request.user, unread=True if unread_only else None)
    page = Paginator(items, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "notifications/list.html",
        {
            **role_context(request.user),
            "page": page,
            "unread_only": unread_only,
            "query": "unread=1" if unread_only else "",
            "unread": selectors.unread_count(request.user),
        },
    )


@web_view
@require_POST
def notification_read(request, pk: int):
    notification = services.notification_mark_read(user=request.user, notification_id=pk)
    if request.POST.get("open") and notification.link.startswith("/"):
        return redirect(notification.link)
    return redirect(reverse("notifications:list"))


@web_view
@require_POST
def notifications_read_all(request):
    marked = services.notifications_mark_all_read(user=request.user)
    messages.success(
        request, ngettext("%(n)s notification marked read.", "%(n)s notifications marked read.", marked) % {"n": marked}
    )
    return redirect(reverse("notifications:list"))


@web_view
@require_http_methods(["GET", "POST"])
def preferences(request):
    if request.method == "POST":
        chosen = [
            {"kind": kind.value, "in_app": f"{kind.value}-in_app" in request.POST, "email": f"{kind.value}-email" in request.POST}
            for kind in Kind
        ]
        services.preferences_update(user=request.user, preferences=chosen)
        messages.success(request, gettext("Your notification preferences are saved."))
        return redirect(reverse("notifications:preferences"))
    return render(
        request,
        "notifications/preferences.html",
        {**role_context(request.user), "preferences": selectors.preferences_for(request.user), "has_email": bool(request.user.email)},
    )
