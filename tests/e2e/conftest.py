"""Browser tests: Playwright (sync API) driving the system's Chromium, headless, against
pytest-django's live server on a transactional test database.

Playwright's sync API runs an event loop in the test thread, and Django refuses database
access from a thread with a running loop unless DJANGO_ALLOW_ASYNC_UNSAFE is set. The live
server answers from its own thread, so this only concerns the test's own ORM setup.
No browser is downloaded: `make system-packages` installs Debian's chromium.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = os.environ.get("FEDGOV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (make system-packages), or set FEDGOV_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(headless=True, executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser, base_url: str):
    """A page in a fresh browser context (no cookies) on `base_url`; console errors, CSP
    violations among them, are collected in `page.console_errors`. Close `page.context`."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda msg: page.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    return page


@pytest.fixture
def page(browser, live_server, transactional_db):
    """A fresh browser context on the live server (see new_page)."""
    page = new_page(browser, live_server.url)
    yield page
    page.context.close()


@pytest.fixture
def cast(transactional_db):
    from tests.factories import build_cast

    return build_cast()


def login(page, username: str, password: str = "pw") -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def logout(page) -> None:
    page.locator('form[data-role="logout"] button').click()
    page.wait_for_url("**/accounts/login/")


def no_csp_violations(page) -> None:
    assert not [e for e in page.console_errors if "Content Security Policy" in e or "Refused" in e], page.console_errors


def screenshot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
