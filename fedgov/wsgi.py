"""WSGI entry point (gunicorn fedgov.wsgi).

A worker pays its one-time costs here, before gunicorn lets it accept a connection: the URL
configuration imports every view, serializer and the libraries behind them (about 0.4 s of
CPU, more on a busy machine). Left to the first request, that second lands on whichever
client comes first after a (re)start, and on every request queued behind it: under load, a
worker restart alone pushed the API's p99 past 100 ms (bench/api_load.py).
"""

import os

from django.core.wsgi import get_wsgi_application

from fedgov.memory import release_large_buffers


def warm_up() -> None:
    """Import the URL configuration and build its lookup tables, and load each language's
    catalogue, so that no request pays for them. Opens no connection (safe before a fork)."""
    from django.conf import settings
    from django.urls import get_resolver
    from django.utils import translation

    resolver = get_resolver()
    _ = resolver.url_patterns  # imports fedgov.urls and, through it, every view module
    _ = resolver.reverse_dict  # the reverse() tables
    for code, _name in settings.LANGUAGES:
        with translation.override(code):
            translation.gettext("Not found.")


release_large_buffers()  # 4 MB vectors go back to the OS when freed (fedgov/memory.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings")
application = get_wsgi_application()
warm_up()
