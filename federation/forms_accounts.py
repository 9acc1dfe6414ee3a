"""Forms of the account pages (tokens, the one-time code) and of the reports' filters."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from .forms import EventFilterForm, LedgerFilterForm
from .models import ApiToken


class TokenCreateForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100, required=False, help_text=_("What the token is for, to recognise it later."))
    scopes = forms.MultipleChoiceField(
        label=_("Scopes"),
        choices=[c for c in ApiToken.Scope.choices if c[0] != ApiToken.Scope.AGENT],
        widget=forms.CheckboxSelectMultiple,
        help_text=_("read: see what you can see; trigger: request rounds; approve: approve rounds and create tokens."),
    )
    expires_in_days = forms.IntegerField(min_value=1, max_value=365, initial=90, label=_("Expires after (days)"))

    def __init__(self, *args, agent: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if agent:  # the agent scope only for a partner agent's user (the service checks it too)
            self.fields["scopes"].choices = ApiToken.Scope.choices


class CodeForm(forms.Form):
    code = forms.RegexField(
        regex=r"^\s*[0-9]{6}\s*$",
        label=_("Six-digit code"),
        error_messages={"invalid": _("Enter the six digits your authenticator app shows.")},
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )

    def token(self) -> str:
        return self.cleaned_data["code"].strip()


class DateRangeMixin(forms.Form):
    date_from = forms.DateField(required=False, label=_("From"), widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label=_("To (inclusive)"), widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and end < start:
            self.add_error("date_to", _("The end of the range is before its start."))
        return data


class LedgerExportForm(DateRangeMixin, LedgerFilterForm):
    """The ledger page's filters (kind, round) with a date range."""


class EventExportForm(DateRangeMixin, EventFilterForm):
    """The history page's filters (agreement, kind) with a date range."""
