"""Forms of the web UI. They parse and type the input; the rules live in the services.

A form here checks only what a browser could get wrong (a missing value, text where a number
belongs). Everything the domain decides (is this delta within the agreement's ceiling? is the
quorum larger than the number of parties?) is the service's business: the view calls the
service through `federation.web.base.attempt`, which puts each `ValidationFailed.details["fields"]` message next
to its field, so the web UI and the API say the same thing. The agreement form also asks the
service's own rule list (`agreement_terms_problems`) about the values that did parse, so one
submit reports every problem, not the parse errors first and the domain rules on the next try.
"""

from __future__ import annotations

import json
import re

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.utils.translation import gettext_lazy as _

from .models import AUDITORS_GROUP, Agreement, Dataset, Membership, Organisation
from .services.agreements import agreement_terms_problems

User = get_user_model()


def _split_list(text: str) -> list[str]:
    """Split on new lines and commas, dropping blanks."""
    return [part.strip() for part in re.split(r"[\n,;]", text or "") if part.strip()]


class ListField(forms.CharField):
    """A list of names typed one per line (or separated by commas)."""

    widget = forms.Textarea(attrs={"rows": 3})

    def to_python(self, value):
        return _split_list(super().to_python(value))


class BoundsField(forms.CharField):
    """Optional public [low, high] bounds, one "low, high" pair per line."""

    widget = forms.Textarea(attrs={"rows": 3})

    def to_python(self, value):
        text = super().to_python(value) or ""
        pairs = []
        for n, line in enumerate((ln for ln in text.splitlines() if ln.strip()), start=1):
            parts = [p for p in re.split(r"[\s,;]+", line.strip()) if p]
            try:
                pair = [float(p) for p in parts]
            except ValueError:
                raise forms.ValidationError(_("Line %(n)s: write two numbers, low and high.") % {"n": n}) from None
            if len(pair) != 2:
                raise forms.ValidationError(_("Line %(n)s: write two numbers, low and high.") % {"n": n})
            pairs.append(pair)
        return pairs


class TransformsField(forms.CharField):
    """Optional per-feature transforms, one "feature: transform" line each (e.g. "area: log1p")."""

    widget = forms.Textarea(attrs={"rows": 2})

    def to_python(self, value):
        text = super().to_python(value) or ""
        out = {}
        for n, line in enumerate((ln for ln in text.splitlines() if ln.strip()), start=1):
            feature, sep, transform = line.partition(":")
            if not sep or not feature.strip() or not transform.strip():
                raise forms.ValidationError(_('Line %(n)s: write "feature: transform", e.g. "area: log1p".') % {"n": n})
            if feature.strip() in out:
                raise forms.ValidationError(
                    _("Line %(n)s: %(feature)r is given a transform twice.") % {"n": n, "feature": feature.strip()}
                )
            out[feature.strip()] = transform.strip()
        return out


# --- Organisations ----------------------------------------------------------------------------


class OrganisationForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=200)
    slug = forms.SlugField(label=_("Slug"), max_length=64, help_text=_("Short name used in URLs and audit bundles, e.g. st-marys."))
    kind = forms.ChoiceField(label=_("Kind"), choices=Organisation.Kind.choices, initial=Organisation.Kind.HOSPITAL)


class RepresentativeForm(forms.Form):
    """A new person at an organisation: the user account and its membership."""

    username = forms.CharField(label=_("Username"), max_length=150)
    first_name = forms.CharField(label=_("First name"), max_length=150, required=False)
    last_name = forms.CharField(label=_("Last name"), max_length=150, required=False)
    email = forms.EmailField(label=_("Email"), required=False)
    role = forms.ChoiceField(label=_("Role"), choices=Membership.Role.choices, initial=Membership.Role.REPRESENTATIVE)
    password = forms.CharField(
        label=_("Password"),
        widget=forms.PasswordInput(render_value=False), strip=False, help_text=_("Initial password; tell it to the person.")
    )

    def clean_username(self):
        username = self.cleaned_data["username"]
        if User.objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(_("A user with this username already exists."))
        return username

    def clean(self):
        data = super().clean()
        password = data.get("password")
        if password:
            probe = User(
                username=data.get("username") or "",
                email=data.get("email") or "",
                first_name=data.get("first_name") or "",
                last_name=data.get("last_name") or "",
            )
            try:
                validate_password(password, probe)
            except forms.ValidationError as exc:
                self.add_error("password", exc)
        return data


class ExistingMemberForm(forms.Form):
    """Give an existing user a role at an organisation."""

    user = forms.ModelChoiceField(label=_("User"), queryset=User.objects.order_by("username"), to_field_name="username")
    role = forms.ChoiceField(label=_("Role"), choices=Membership.Role.choices, initial=Membership.Role.REPRESENTATIVE)


# --- Agreements -------------------------------------------------------------------------------


class DateInput(forms.DateInput):
    """An HTML date field. Its value must be ISO 8601 (YYYY-MM-DD): a browser's date input
    reads nothing else, so a localised "01/12/2026" shows empty and saves as missing."""

    input_type = "date"

    def __init__(self, attrs=None, format=None):  # noqa: A002 (Django's argument name)
        super().__init__(attrs=attrs, format=format or "%Y-%m-%d")


class AgreementForm(forms.Form):
    title = forms.CharField(label=_("Title"), max_length=200)
    purposes = ListField(label=_("Purposes"), help_text=_("Permitted purposes, one per line."))
    valid_from = forms.DateField(label=_("Valid from"), widget=DateInput)
    valid_until = forms.DateField(label=_("Valid until"), widget=DateInput)
    parties = forms.ModelMultipleChoiceField(
        label=_("Parties"),
        queryset=Organisation.objects.all(), widget=forms.CheckboxSelectMultiple, help_text=_("At least two organisations.")
    )
    min_participants = forms.IntegerField(label=_("Min participants"), initial=2, help_text=_("Fewest datasets a round may use."))
    min_noise_multiplier = forms.FloatField(label=_("Min noise multiplier"), help_text=_("DP floor: smallest noise multiplier z a plan may use."))
    max_clip_norm = forms.FloatField(label=_("Max clip norm"), help_text=_("DP ceiling: largest clipping norm C."))
    max_delta = forms.FloatField(label=_("Max delta"), help_text=_("DP ceiling: largest delta a dataset may declare, e.g. 1e-5."))
    max_epsilon_per_round = forms.FloatField(label=_("Max epsilon per round"), help_text=_("DP ceiling: largest epsilon one round may spend on a dataset."))
    max_epsilon_budget = forms.FloatField(label=_("Max epsilon budget"), help_text=_("Largest total epsilon budget a dataset may be given."))
    approval_rule = forms.ChoiceField(label=_("Approval rule"), choices=Agreement.ApprovalRule.choices, initial=Agreement.ApprovalRule.EVERY_PARTY)
    approval_quorum = forms.IntegerField(label=_("Approval quorum"), required=False, help_text=_("k, for the quorum rule."))
    auditors = forms.ModelMultipleChoiceField(
        label=_("Auditors"),
        queryset=User.objects.filter(groups__name=AUDITORS_GROUP).order_by("username"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    auditor_access = forms.ChoiceField(
        label=_("Auditor access"),
        choices=Agreement.AuditorAccess.choices, initial=Agreement.AuditorAccess.LEDGER_AND_GOVERNANCE
    )
    exit_notice_days = forms.IntegerField(label=_("Exit notice days"), initial=30, min_value=0, help_text=_("Days between an exit notice and the exit."))
    data_retention = forms.CharField(label=_("Data retention"), widget=forms.Textarea(attrs={"rows": 2}), required=False)

    TERM_NAMES = (
        "title", "purposes", "valid_from", "valid_until", "min_participants", "min_noise_multiplier", "max_clip_norm",
        "max_delta", "max_epsilon_per_round", "max_epsilon_budget", "approval_rule", "approval_quorum",
        "auditor_access", "exit_notice_days", "data_retention",
    )  # fmt: skip

    @classmethod
    def initial_from(cls, agreement: Agreement) -> dict:
        initial = {name: getattr(agreement, name) for name in cls.TERM_NAMES}
        initial["purposes"] = "\n".join(agreement.purposes or [])
        initial["parties"] = list(agreement.parties.all())
        initial["auditors"] = list(agreement.auditors.all())
        return initial

    def clean(self):
        """Say everything at once (issue 17): beside what did not parse, every domain rule the
        parsed values already break, as the service words it (agreement_terms_problems)."""
        data = super().clean()
        parties = data.get("parties") if "parties" in data else None
        for name, messages in agreement_terms_problems(terms=data, parties=parties).items():
            if name in self.errors:
                continue
            for message in messages:
                self.add_error(name if name in self.fields else None, message)
        return data

    def terms(self) -> dict:
        data = self.cleaned_data
        out = {name: data.get(name) for name in self.TERM_NAMES}
        if out["approval_rule"] == Agreement.ApprovalRule.EVERY_PARTY:
            out["approval_quorum"] = None
        out["data_retention"] = out["data_retention"] or ""
        return out


class ReasonForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), widget=forms.Textarea(attrs={"rows": 2}), required=False)


class SignForm(forms.Form):
    """The representative signs the hash shown to it: the service refuses any other."""

    terms_hash = forms.CharField(label=_("Terms hash"), max_length=64, widget=forms.HiddenInput)
    confirm = forms.BooleanField(label=_("I have read these terms and sign them for my organisation."))


class ExitNoticeForm(forms.Form):
    confirm = forms.BooleanField(label=_("I give notice that my organisation leaves this agreement."))


# --- Datasets ---------------------------------------------------------------------------------


class DatasetForm(forms.Form):
    organisation = forms.ModelChoiceField(label=_("Organisation"), queryset=Organisation.objects.all(), to_field_name="slug")
    agreement = forms.ModelChoiceField(label=_("Agreement"), queryset=Agreement.objects.all())
    name = forms.CharField(label=_("Name"), max_length=200)
    slug = forms.SlugField(label=_("Slug"), max_length=64)
    record_count = forms.IntegerField(label=_("Record count"), help_text=_("How many records the partner holds (metadata only)."))
    feature_names = ListField(label=_("Feature names"), help_text=_("Feature columns, one per line or comma-separated, in order."))
    label_name = forms.CharField(label=_("Label name"), max_length=200)
    label_classes = ListField(label=_("Label classes"), help_text=_("Label classes, e.g. benign, malignant."))
    feature_bounds = BoundsField(
        label=_("Feature bounds"),
        required=False,
        help_text=_('Public bounds of each feature, one "low, high" pair per line in feature order; partners scale with them.'),
    )
    feature_transforms = TransformsField(
        label=_("Feature transforms"),
        required=False,
        help_text=_('Public transforms applied before scaling, one "feature: log1p" (or sqrt) per line; features need a lower bound >= 0.'),
    )
    centred = forms.BooleanField(required=False, label=_("Scale features to [-1, 1] (centred) instead of [0, 1]"))
    epsilon_budget = forms.FloatField(label=_("Epsilon budget"), help_text=_("Total epsilon this dataset may spend, within the agreement's maximum."))
    delta = forms.FloatField(label=_("Delta"), help_text=_("Delta at which spent epsilon is measured, e.g. 1e-5."))
    accountant = forms.ChoiceField(label=_("Accountant"), choices=Dataset.Accountant.choices, initial=Dataset.Accountant.RDP)

    def __init__(self, *args, organisations=None, agreements=None, **kwargs):
        super().__init__(*args, **kwargs)
        if organisations is not None:
            self.fields["organisation"].queryset = organisations
        if agreements is not None:
            self.fields["agreement"].queryset = agreements

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        data["feature_bounds"] = data.get("feature_bounds") or None
        return data


class RaiseBudgetForm(forms.Form):
    epsilon_budget = forms.FloatField(
        label=_("New epsilon budget"), help_text=_("Budgets only go up: spent privacy is never given back.")
    )


# --- Plans and rounds -------------------------------------------------------------------------


class PlanForm(forms.Form):
    """A training plan in two steps: the agreement, datasets, purpose, rounds and model first;
    then the planner's proposal fills the DP-SGD and FedAvg values (each editable), a preview
    shows every failing rule next to its field and the whole plan's epsilon per dataset."""

    MODEL_CHOICES = (("logreg", _("Logistic regression")), ("mlp", _("Multi-layer perceptron")))
    ACTION_PROPOSE, ACTION_PREVIEW, ACTION_CREATE = "propose", "preview", "create"
    #: What the planner needs (step 1).
    SCHEDULE_FIELDS = ("agreement", "datasets", "rounds_total", "model_kind", "hidden")

    agreement = forms.ModelChoiceField(label=_("Agreement"), queryset=Agreement.objects.all())
    name = forms.CharField(label=_("Name"), max_length=200)
    # A list of the agreements' permitted purposes (grouped by agreement), not free text; the
    # choice is checked against the chosen agreement in clean().
    purpose = forms.CharField(label=_("Purpose"), max_length=200, help_text=_("One of the agreement's permitted purposes."), widget=forms.Select)
    datasets = forms.ModelMultipleChoiceField(
        label=_("Datasets"),
        queryset=Dataset.objects.select_related("agreement", "organisation"), widget=forms.CheckboxSelectMultiple
    )
    model_kind = forms.ChoiceField(choices=MODEL_CHOICES, initial="logreg", label=_("Model"))
    hidden = forms.CharField(required=False, label=_("Hidden layers"), help_text=_("MLP only: widths, e.g. 64, 32."))
    rounds_total = forms.IntegerField(label=_("Rounds total"), initial=10, min_value=1)
    # The planner's values (services.plan_checks.PLANNED_FIELDS): empty takes the proposal's.
    noise_multiplier = forms.FloatField(label=_("Noise multiplier"), required=False, help_text=_("z: Gaussian noise std as a multiple of the clip norm."))
    clip_norm = forms.FloatField(label=_("Clip norm"), required=False, help_text=_("C: per-example gradient clipping norm."))
    batch_size = forms.IntegerField(label=_("Batch size"), initial=64, min_value=1, help_text=_("Expected batch; sampling rate q = batch / records."))
    sampling_rate = forms.FloatField(
        label=_("Sampling rate"),
        required=False, help_text=_("Or one sampling rate q in (0, 1] for every dataset (then the batch size is not used).")
    )
    local_steps = forms.IntegerField(label=_("Local steps"), required=False, min_value=1, help_text=_("K: DP-SGD steps per round at each partner."))
    learning_rate = forms.FloatField(label=_("Learning rate"), required=False)
    momentum = forms.FloatField(label=_("Momentum"), required=False)
    server_learning_rate = forms.FloatField(label=_("Server learning rate"), required=False)
    server_optimizer = forms.CharField(
        label=_("Server optimizer"),
        required=False, help_text=_('JSON, e.g. {"kind": "adam", "lr": 0.05}; empty after a proposal: plain FedAvg.')
    )
    eval_noise_multiplier = forms.FloatField(
        label=_("Eval noise multiplier"),
        required=False, help_text=_("Noise of the evaluation counts; empty after a proposal disables the release.")
    )
    secagg_threshold = forms.IntegerField(label=_("Secagg threshold"), required=False, help_text=_("Survivors needed to unmask; empty means two thirds."))
    phase_timeout_seconds = forms.IntegerField(label=_("Phase timeout seconds"), initial=120, min_value=1)
    allow_partial = forms.BooleanField(
        required=False, label=_("Accept a plan the remaining budgets cannot pay for in full (its later rounds will be blocked)")
    )
    # Set once the proposal is on the form: from then on an empty optional value means none
    # (no fixed sampling rate, no evaluation release, FedAvg), not the planner's.
    proposed = forms.BooleanField(label=_("Proposed"), required=False, widget=forms.HiddenInput)
    # The retry policy (not a DP parameter): shown with its defaults.
    max_consecutive_failures = forms.IntegerField(
        required=False, initial=3, min_value=1, max_value=1000, label=_("Pause after failed tries in a row"),
        help_text=_("A round aborted for dropouts or a missed deadline is tried again; after this many failed tries in a row the plan is paused until someone resumes it (1: never retry)."),
    )
    retry_backoff_seconds = forms.IntegerField(
        required=False, initial=30, min_value=0, max_value=86_400, label=_("Retry backoff (seconds)"), help_text=_("Wait before the next try of an aborted round.")
    )

    ERROR_FIELDS = {"model_spec": "hidden", "feature_names": "datasets", "label_name": "datasets", "label_classes": "datasets"}
    #: Empty after a proposal means None, not the planner's value.
    NONE_WHEN_EMPTY = ("sampling_rate", "eval_noise_multiplier", "server_optimizer")

    def __init__(self, *args, agreements=None, datasets=None, **kwargs):
        super().__init__(*args, **kwargs)
        if agreements is not None:
            self.fields["agreement"].queryset = agreements
        if datasets is not None:
            self.fields["datasets"].queryset = datasets
        self.fields["datasets"].label_from_instance = lambda d: f"{d.slug} ({d.organisation.name}, {d.agreement.title})"
        choices = [("", _("Choose a purpose"))]
        for agreement in self.fields["agreement"].queryset.only("title", "purposes"):
            choices.append((agreement.title, [(p, p) for p in agreement.purposes or []]))
        self.fields["purpose"].widget.choices = choices

    def clean(self):
        data = super().clean()
        agreement, purpose = data.get("agreement"), data.get("purpose")
        if agreement is not None and purpose and purpose not in (agreement.purposes or []):
            from .services.plan_checks import MSG_PURPOSE_NOT_PERMITTED

            self.add_error("purpose", MSG_PURPOSE_NOT_PERMITTED.format(purpose=purpose, allowed=", ".join(agreement.purposes or [])))
        return data

    def clean_hidden(self):
        text = self.cleaned_data.get("hidden") or ""
        try:
            return [int(p) for p in _split_list(text)]
        except ValueError:
            raise forms.ValidationError(_("Write whole numbers separated by commas, e.g. 64, 32.")) from None

    def clean_server_optimizer(self):
        text = (self.cleaned_data.get("server_optimizer") or "").strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            raise forms.ValidationError(_('Write a JSON object, e.g. {"kind": "adam", "lr": 0.05}.')) from None
        if not isinstance(value, dict):
            raise forms.ValidationError(_('Write a JSON object, e.g. {"kind": "adam", "lr": 0.05}.'))
        return value

    def model_spec(self, data: dict | None = None) -> dict:
        data = self.cleaned_data if data is None else data
        kind, hidden = data.get("model_kind") or "logreg", data.get("hidden") or []
        return {"kind": kind, **({"hidden": hidden} if kind == "mlp" and hidden else {})}

    def schedule_valid(self) -> bool:
        """Whether step 1 (what the planner needs) is valid; errors of the other fields are
        dropped, since they are not filled in yet."""
        self.is_valid()
        for name in list(self.errors):
            if name not in self.SCHEDULE_FIELDS:
                del self.errors[name]
        return not any(name in self.errors for name in self.SCHEDULE_FIELDS)

    def given_planned(self, planned_fields) -> dict:
        """The planner's fields the administrator filled in (the others take the proposal)."""
        data = self.cleaned_data
        given = {name: data[name] for name in planned_fields if data.get(name) is not None}
        if data.get("proposed"):
            for name in self.NONE_WHEN_EMPTY:
                given.setdefault(name, {} if name == "server_optimizer" else None)
        return given

    def service_kwargs(self, planned_fields=()) -> dict:
        """Keyword arguments of plan_create, without the planner's fields left empty."""
        data = dict(self.cleaned_data)
        data.pop("proposed", None)
        data["model_spec"] = self.model_spec(data)
        data.pop("model_kind")
        data.pop("hidden")
        data["datasets"] = list(data["datasets"])
        for name in planned_fields:
            data.pop(name, None)
        for name in ("max_consecutive_failures", "retry_backoff_seconds"):  # empty: the default shown
            if data.get(name) is None:
                data[name] = self.fields[name].initial
        return data

    @staticmethod
    def proposal_initial(values: dict) -> dict:
        """Form values of the planner's proposal."""
        out = {name: value for name, value in values.items() if name != "server_optimizer"}
        out["server_optimizer"] = json.dumps(values.get("server_optimizer") or {}) if values.get("server_optimizer") else ""
        out["proposed"] = True
        return out


class RejectForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), widget=forms.Textarea(attrs={"rows": 2}), help_text=_("The other parties and the auditors read it."))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Leave the emptiness check to the service, whose message tests assert on.
        self.fields["reason"].required = False


class StandingApprovalForm(forms.Form):
    max_rounds = forms.IntegerField(required=False, label=_("At most this many rounds"))
    max_epsilon = forms.FloatField(required=False, label=_("At most this epsilon spent per dataset"))


class LedgerFilterForm(forms.Form):
    KIND_CHOICES = (
        ("", _("Every kind")),
        ("GRANT", _("Budget granted")),
        ("RESERVE", _("Reserved")),
        ("COMMIT", _("Committed")),
        ("RELEASE", _("Released")),
    )

    kind = forms.ChoiceField(label=_("Kind"), choices=KIND_CHOICES, required=False)
    round = forms.IntegerField(
        required=False, min_value=1, label=_("Round number"), help_text=_("The round's number in its plan, as in the Round column (#1).")
    )


class EventFilterForm(forms.Form):
    agreement = forms.ModelChoiceField(label=_("Agreement"), queryset=Agreement.objects.none(), required=False, empty_label=_("Every agreement"))
    kind = forms.ChoiceField(label=_("Kind"), required=False)

    def __init__(self, *args, agreements=None, **kwargs):
        super().__init__(*args, **kwargs)
        from .models import GovernanceEvent

        if agreements is not None:
            self.fields["agreement"].queryset = agreements
        self.fields["kind"].choices = [("", _("Every kind")), *GovernanceEvent.Kind.choices]
