"""Password reset by email, through a real SMTP server (aiosmtpd in its own process)."""

from __future__ import annotations

import email
import mailbox
import re
import socket
import subprocess
import sys
import time
from email import policy

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_sink(tmp_path):
    """An SMTP server on loopback that stores every mail it receives in a Maildir."""
    port = _free_port()
    maildir = tmp_path / "mail"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Mailbox", str(maildir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"aiosmtpd did not start: {proc.stderr.read().decode() if proc.stderr else ''}") from None
            time.sleep(0.1)
    try:
        yield port, maildir
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _mails(maildir) -> list:
    if not maildir.exists():
        return []
    return [m for m in mailbox.Maildir(str(maildir), factory=None, create=False)]


def test_a_user_resets_a_forgotten_password_through_the_mail(cast, smtp_sink):
    port, maildir = smtp_sink
    cast.rep_a.email = "rep-a@hospital.example"
    cast.rep_a.save()
    client = Client()
    assert "/accounts/password/reset/" in client.get("/accounts/login/").content.decode()
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1", EMAIL_PORT=port):
        sent = client.post("/accounts/password/reset/", {"email": "rep-a@hospital.example"})
        assert sent.status_code == 302 and sent["Location"] == "/accounts/password/reset/sent/"
        # An unknown address gets the same answer and no mail (no account enumeration).
        assert client.post("/accounts/password/reset/", {"email": "nobody@x.example"})["Location"] == sent["Location"]
    deadline = time.monotonic() + 10
    while not _mails(maildir) and time.monotonic() < deadline:
        time.sleep(0.1)
    mails = _mails(maildir)
    assert len(mails) == 1
    message = mailbox.MaildirMessage(mails[0])
    parsed = email.message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["To"] == "rep-a@hospital.example"
    body = parsed.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"https?://[^/\s]+(/accounts/reset/[^\s]+/)", body).group(1)

    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200 and "Set a new password" in form_page.content.decode()
    set_url = form_page.redirect_chain[-1][0]
    new = "Correct-horse-battery-7"
    done = client.post(set_url, {"new_password1": new, "new_password2": new})
    assert done.status_code == 302 and done["Location"] == "/accounts/reset/done/"
    assert client.get(link, follow=True).content.decode().count("does not work") == 1  # used once

    fresh = Client()
    assert fresh.post("/accounts/login/", {"username": "rep-a", "password": "pw"}).status_code == 200  # the old one
    assert fresh.post("/accounts/login/", {"username": "rep-a", "password": new})["Location"] == "/"
    assert fresh.get("/").status_code == 200
