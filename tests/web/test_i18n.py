"""The UI in French (#17): every catalogue string translated, no English left on the journeys'
pages, and the language chosen per user, by the language cookie or by the browser.

The pages are walked as each role (administrator, representative, auditor) with French chosen
through the language switcher. Two checks on every visible text (text nodes, and the title,
aria-label and data-label attributes; not scripts or styles):

1. no text equals an English msgid of the catalogue whose French msgstr differs (a string that
   is in the catalogue but did not go through gettext on this page);
2. once the data of the database (names, titles, purposes, stored event messages...) is taken
   out, no text still reads as English (a string that was never marked for translation).
"""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from federation.models import UserPreference
from federation.services.rounds import round_request
from tests.web.test_pages import PAGES

pytestmark = pytest.mark.django_db

PO_PATH = Path(settings.BASE_DIR) / "locale" / "fr" / "LC_MESSAGES" / "django.po"

# Words that are English and not French: a text that still contains one after the data are
# taken out was not translated. (Words the two languages share, such as "budget", "plan",
# "phase", "version", "organisation", "type", are not listed.)
ENGLISH_WORDS = re.compile(
    r"\b(the|and|of|your|you|yet|with|this|that|from|by|every|each|round|rounds|ledger|ledgers|agreement|agreements|"
    r"dataset|datasets|spent|approve|approved|approval|approvals|signed|sign|requested|remaining|nobody|never|waiting|"
    r"pending|verified|verify|show|register|define|decide|give|notice|exit|download|history|inbox|dashboard|training|"
    r"log|out|password|token|tokens|none|no|not|is|are|has|have|here|there|what|who|when|which|people|name|kind|"
    r"records|status|title|valid|terms|auditors?|filter|new|edit|amend|suspend|resume|terminate)\b",
    re.I,
)


# --- The catalogue ------------------------------------------------------------------------------


def parse_po(path: Path) -> list[dict]:
    """The entries of a .po file: msgctxt, msgid, msgid_plural, msgstr or msgstr[n], flags."""
    entries, current, key = [], None, None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            if current is not None:
                entries.append(current)
            current = None
            continue
        if current is None:
            current = {"flags": set(), "msgstr": {}}
        if line.startswith("#,"):
            current["flags"].update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            value = ast.literal_eval(line)
            if isinstance(key, int):
                current["msgstr"][key] += value
            else:
                current[key] += value
        else:
            name, _, value = line.partition(" ")
            value = ast.literal_eval(value)
            match = re.fullmatch(r"msgstr(?:\[(\d+)\])?", name)
            if match:
                key = int(match.group(1) or 0)
                current["msgstr"][key] = value
            else:
                key = name
                current[key] = value
    if current is not None:
        entries.append(current)
    return [e for e in entries if e.get("msgid")]  # the header has an empty msgid


CATALOGUE = parse_po(PO_PATH)


def english_strings() -> set[str]:
    """Every English msgid (and plural) whose French translation is a different text."""
    out = set()
    for entry in CATALOGUE:
        french = set(entry["msgstr"].values())
        for english in (entry["msgid"], entry.get("msgid_plural")):
            if english and english not in french and not re.search(r"%\(\w+\)", english):
                out.add(normalise(english))
    return out


def normalise(text: str) -> str:
    return " ".join(text.split())


# --- The page's visible text -----------------------------------------------------------------


class VisibleText(HTMLParser):
    """Text nodes and the title, aria-label and data-label attributes; no script or style, and
    no `<code>`: a command line or a hash is typed as shown, in any language."""

    ATTRIBUTES = ("title", "aria-label", "data-label", "placeholder")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "code"):
            self._skip += 1
        for name, value in attrs:
            if name in self.ATTRIBUTES and value:
                self.texts.append(normalise(value))

    def handle_endtag(self, tag):
        if tag in ("script", "style", "code") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.texts.append(normalise(data))


def visible_texts(html: str) -> list[str]:
    parser = VisibleText()
    parser.feed(html)
    return parser.texts


def data_strings() -> list[str]:
    """Every string stored in the database (names, titles, purposes, stored event messages,
    governance reasons and notifications, usernames...): data, shown as entered or as recorded,
    not UI text."""
    values: set[str] = set()

    def collect(value):
        if isinstance(value, str):
            if value.strip():
                values.add(normalise(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                collect(k)
                collect(v)
        elif isinstance(value, list | tuple):
            for v in value:
                collect(v)

    models = [m for app in ("federation", "accounting", "notifications") for m in apps.get_app_config(app).get_models()]
    models.append(get_user_model())
    for model in models:
        fields = [f.attname for f in model._meta.concrete_fields]
        for row in model.objects.values_list(*fields):
            collect(list(row))
    return sorted(values, key=len, reverse=True)


def english_left(text: str, data: list[str]) -> str | None:
    """The English word still in `text` once the data it quotes are taken out, or None."""
    for value in data:
        if value in text:
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", " ", text) if len(value) <= 3 else text.replace(value, " ")
    text = re.sub(r"[\w.-]+@[\w.-]+|https?://\S+|/[\w/.-]*|\b[\w-]*\d[\w-]*\b", " ", text)  # mails, paths, ids
    match = ENGLISH_WORDS.search(text)
    return match.group(0) if match else None


# --- The journeys --------------------------------------------------------------------------------

# Pages of test_pages.PAGES that are not HTML pages of their own.
NOT_PAGES = {"ledger_bundle"}
EXTRA_PAGES = {
    "tokens": lambda c, r: reverse("account_tokens"),
    "two_factor": lambda c, r: reverse("account_two_factor"),
    "password_change": lambda c, r: reverse("password_change"),
    "agreement_report": lambda c, r: reverse("web:agreement_report", args=[c.agreement.pk]),
    "round_detail_waiting": lambda c, r: reverse("web:round_detail", args=[r.pk]),
    "unknown_page": lambda c, r: "/no-such-page/",
    "notifications": lambda c, r: reverse("notifications:list"),
    "notification_preferences": lambda c, r: reverse("notifications:preferences"),
}
ROLES = {"admin": "admin", "representative": "rep_a", "auditor": "auditor"}


def in_french(user) -> Client:
    """A client logged in as `user` who chose French with the language switcher."""
    client = Client()
    client.force_login(user)
    response = client.post(reverse("set_language"), {"language": "fr", "next": "/"})
    assert response.status_code == 302
    assert UserPreference.objects.get(user=user).language == "fr"
    return client


def pages_for(role: str, cast, completed, waiting) -> list[tuple[str, str]]:
    out = []
    for page, (build, expected) in PAGES.items():
        if page in NOT_PAGES or expected.get(ROLES[role]) != 200:
            continue
        out.append((page, build(cast, waiting if page == "round_approval" else completed)))
    for page, build in EXTRA_PAGES.items():
        out.append((page, build(cast, waiting if page == "round_detail_waiting" else completed)))
    return out


def check_page(client: Client, page: str, url: str, english: set[str], data: list[str]) -> int:
    response = client.get(url)
    assert response.status_code in (200, 404), (page, response.status_code)
    assert response["Content-Language"] == "fr", page
    html = response.content.decode()
    assert '<html lang="fr"' in html or page == "round_progress", page
    texts = visible_texts(html)
    untranslated = [t for t in texts if t in english and t not in data]  # a user named "auditor" is data
    assert not untranslated, (page, url, untranslated)
    still_english = [(t, w) for t in texts if (w := english_left(t, data))]
    assert not still_english, (page, url, still_english)
    return len(texts)


@pytest.mark.parametrize("role", ROLES)
def test_every_journey_page_shows_no_english_once_french_is_chosen(cast, completed_round, role):
    waiting = round_request(actor=cast.admin, plan=cast.plan)
    english = english_strings()
    data = data_strings()
    client = in_french(getattr(cast, ROLES[role]))
    walked = 0
    for page, url in pages_for(role, cast, completed_round, waiting):
        assert check_page(client, page, url, english, data) > 0, page
        walked += 1
    assert walked >= {"admin": 25, "representative": 20, "auditor": 15}[role]


def test_the_login_page_in_french_for_a_browser_that_asks_for_it(db):
    english = english_strings()
    response = Client().get(reverse("login"), HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9,en;q=0.5")
    html = response.content.decode()
    assert response["Content-Language"] == "fr"
    assert "Connexion à fedgov" in html and "Mot de passe oublié ?" in html
    assert not [t for t in visible_texts(html) if t in english]
    assert not [(t, w) for t in visible_texts(html) if (w := english_left(t, []))]
    # The same page for an English browser stays English.
    english_page = Client().get(reverse("login"), HTTP_ACCEPT_LANGUAGE="en-GB,en;q=0.9").content.decode()
    assert "Log in to fedgov" in english_page and '<html lang="en"' in english_page


def test_the_language_cookie_of_the_switcher_wins_over_the_browser(db):
    client = Client()
    response = client.post(reverse("set_language"), {"language": "fr", "next": reverse("login")})
    assert response.status_code == 302 and response["Location"] == reverse("login")
    html = client.get(reverse("login"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Connexion à fedgov" in html


def test_a_users_stored_language_wins_over_the_browser_and_the_cookie(cast):
    UserPreference.objects.create(user=cast.rep_a, language="fr")
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    client.force_login(cast.rep_a)
    response = client.get(reverse("web:dashboard"))
    assert response["Content-Language"] == "fr"
    assert "Tableau de bord" in response.content.decode()
    # Someone with no stored language gets what the browser asks for.
    other = Client(HTTP_ACCEPT_LANGUAGE="en")
    other.force_login(cast.rep_b)
    assert "Dashboard" in other.get(reverse("web:dashboard")).content.decode()


def test_choosing_a_language_signed_in_stores_it_and_it_follows_the_user(cast):
    first = Client()
    first.force_login(cast.auditor)
    first.post(reverse("set_language"), {"language": "fr", "next": "/"})
    assert UserPreference.objects.get(user=cast.auditor).language == "fr"
    # Another browser, which asks for English and has no cookie: French all the same.
    second = Client(HTTP_ACCEPT_LANGUAGE="en")
    second.force_login(cast.auditor)
    assert "Tableau de bord" in second.get(reverse("web:dashboard")).content.decode()
    # Back to English: stored too.
    second.post(reverse("set_language"), {"language": "en", "next": "/"})
    assert UserPreference.objects.get(user=cast.auditor).language == "en"
    third = Client(HTTP_ACCEPT_LANGUAGE="fr")
    third.force_login(cast.auditor)
    assert "Dashboard" in third.get(reverse("web:dashboard")).content.decode()


def test_an_unknown_language_is_refused_and_stores_nothing(cast):
    client = Client()
    client.force_login(cast.rep_a)
    client.post(reverse("set_language"), {"language": "xx", "next": "/"})
    assert not UserPreference.objects.filter(user=cast.rep_a).exists()
    assert client.get(reverse("set_language")).status_code == 405  # POST only


def test_the_catalogue_is_complete_and_has_no_fuzzy_entry():
    assert len(CATALOGUE) > 500
    fuzzy = [e["msgid"] for e in CATALOGUE if "fuzzy" in e["flags"]]
    assert not fuzzy, fuzzy
    empty = [e["msgid"] for e in CATALOGUE if not all(e["msgstr"].values()) or not e["msgstr"]]
    assert not empty, empty
    plurals = [e["msgid"] for e in CATALOGUE if "msgid_plural" in e and sorted(e["msgstr"]) != [0, 1]]
    assert not plurals, plurals
    # The compiled catalogue is the one committed next to it.
    mo = PO_PATH.with_suffix(".mo")
    assert mo.exists() and mo.stat().st_size > 10_000


def test_records_stay_in_english_when_a_french_user_acts(cast):
    """The governance history is one record, in one language: a French-speaking administrator's
    suspension is recorded in English (the page around it is French)."""
    from federation.models import GovernanceEvent

    client = in_french(cast.admin)
    url = reverse("web:agreement_status", args=[cast.agreement.pk, "suspend"])
    response = client.post(url, {"reason": "audit"}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert "suspendu : aucun tour ne démarre avant sa reprise" in html  # the confirmation, in French
    event = GovernanceEvent.objects.filter(kind=GovernanceEvent.Kind.AGREEMENT_SUSPENDED).latest("pk")
    assert "suspended" in event.message and "suspendu" not in event.message
