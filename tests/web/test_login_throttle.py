"""The web and admin login pages: after repeated wrong passwords, per client and per username,
even the right password is refused, with a message saying how long to wait."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

from fedgov.throttles import locked_out_message

LOCKED = locked_out_message(15 * 60)  # the default lockout: 15 minutes


@pytest.fixture(autouse=True)
def _fresh_counters():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def staff(cast):
    cast.admin.is_staff = True
    cast.admin.save(update_fields=["is_staff"])
    return cast.admin


def login(client: Client, url: str, username: str, password: str, **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


LOGIN_PAGES = [("/accounts/login/", "rep-a"), ("/admin/login/", "admin")]


@pytest.mark.parametrize(("url", "username"), LOGIN_PAGES)
def test_after_ten_wrong_passwords_the_right_one_is_refused(cast, staff, url, username):
    client = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(10):
        response = login(client, url, username, f"guess{i}")
        assert response.status_code == 200 and LOCKED not in response.content.decode()
    refused = login(client, url, username, "pw")
    assert refused.status_code == 429
    assert LOCKED in refused.content.decode()
    assert not signed_in(client)


@pytest.mark.parametrize(("url", "username"), LOGIN_PAGES)
def test_rotating_x_forwarded_for_does_not_reset_the_count(cast, staff, url, username):
    client = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(10):
        login(client, url, f"nobody{i}", f"guess{i}", HTTP_X_FORWARDED_FOR=f"10.0.{i}.1")
    # Ten wrong guesses at ten names from one address: that address is locked out.
    refused = login(client, url, username, "pw", HTTP_X_FORWARDED_FOR="10.9.9.9")
    assert refused.status_code == 429 and LOCKED in refused.content.decode()
    assert not signed_in(client)


@pytest.mark.parametrize(("url", "username"), LOGIN_PAGES)
def test_a_username_is_locked_out_whatever_address_the_guesses_come_from(cast, staff, url, username):
    for i in range(10):
        login(Client(REMOTE_ADDR=f"198.51.100.{i}"), url, username, f"guess{i}")
    client = Client(REMOTE_ADDR="192.0.2.77")
    refused = login(client, url, username, "pw")
    assert refused.status_code == 429 and LOCKED in refused.content.decode()
    assert not signed_in(client)


def test_a_locked_out_username_does_not_lock_out_anyone_else(cast):
    for i in range(10):
        login(Client(REMOTE_ADDR=f"198.51.100.{i}"), "/accounts/login/", "rep-a", f"guess{i}")
    other = Client(REMOTE_ADDR="192.0.2.78")
    assert login(other, "/accounts/login/", "rep-b", "pw").status_code == 302
    assert signed_in(other)


def test_behind_one_proxy_the_address_the_proxy_appended_is_counted(cast, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    via_proxy = Client(REMOTE_ADDR="10.0.0.2")
    for i in range(10):
        login(via_proxy, "/accounts/login/", f"nobody{i}", "x", HTTP_X_FORWARDED_FOR=f"198.18.{i}.1, 203.0.113.9")
    refused = login(via_proxy, "/accounts/login/", "rep-a", "pw", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert refused.status_code == 429
    # Another client behind the same proxy signs in.
    assert login(via_proxy, "/accounts/login/", "rep-a", "pw", HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 302


@pytest.mark.parametrize(("url", "username"), LOGIN_PAGES)
def test_fewer_wrong_passwords_than_the_limit_do_not_lock_anyone_out(cast, staff, url, username):
    client = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(9):
        login(client, url, username, f"guess{i}")
    response = login(client, url, username, "pw")
    assert response.status_code == 302 and signed_in(client)


def test_the_limit_and_lockout_come_from_the_settings(cast, settings):
    settings.FEDGOV_LOGIN_FAILURE_LIMIT = 3
    settings.FEDGOV_LOGIN_LOCKOUT_MINUTES = 1
    client = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(3):
        login(client, "/accounts/login/", "rep-a", f"guess{i}")
    refused = login(client, "/accounts/login/", "rep-a", "pw")
    assert refused.status_code == 429
    assert "Too many failed login attempts; try again in 1 minute." in refused.content.decode()


def test_the_failure_throttle_reads_drf_rates_with_a_count_of_units_and_waits_for_the_window_of_the_first_failure():
    from fedgov.throttles import FailureThrottle

    throttle = FailureThrottle("probe", "3/15m")
    assert (throttle.num_requests, throttle.duration) == (3, 900)
    assert FailureThrottle("probe", "20/min").duration == 60
    clock = iter([1000.0, 1100.0, 1150.0, 1200.0, 1300.0, 1899.5, 1900.0])
    throttle.timer = lambda: next(clock)
    keys = [("client", "192.0.2.1")]
    for _ in range(2):
        throttle.record(keys)  # at 1000 and 1100
    assert throttle.check(keys) == 0  # at 1150: two failures, under the limit
    throttle.record(keys)  # at 1200: the third
    assert throttle.check(keys) == 600  # at 1300: the window opened at 1000 closes at 1900
    assert throttle.check(keys) == 1  # at 1899.5
    assert throttle.check(keys) == 0  # at 1900: the window is over
