"""WSGI entry point (gunicorn fedgov.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

from fedgov.memory import release_large_buffers

release_large_buffers()  # 4 MB vectors go back to the OS when freed (fedgov/memory.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fedgov.settings")
application = get_wsgi_application()
