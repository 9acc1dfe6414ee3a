"""The web UI: server-rendered pages that call the same services as the API."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from . import selectors


@login_required
def dashboard(request):
    return render(request, "federation/dashboard.html", selectors.dashboard_for(request.user))
