"""Paths every web server is asked for, whatever the pages link."""

import pytest
from django.contrib.staticfiles import finders
from django.templatetags.static import static

pytestmark = pytest.mark.django_db


def test_favicon_ico_sends_the_browser_to_the_svg_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"] == static("favicon.svg")
    with open(finders.find("favicon.svg"), "rb") as icon:  # the icon the pages link exists
        assert b"<svg" in icon.read()
