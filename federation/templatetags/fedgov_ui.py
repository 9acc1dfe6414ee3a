"""Template tags of the web UI: charts and bars drawn server-side as SVG, and small formatters.

The charts are computed from the data the view passes (ledger entries, round metrics), with
`svgchart`, so they render without JavaScript and under the strict CSP.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import dateformat, timezone
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from . import svgchart

register = template.Library()

CHECK_LABELS = {
    "agreement_active": gettext_lazy("Agreement active"),
    "agreement_signed": gettext_lazy("Signed by every party"),
    "agreement_dates": gettext_lazy("Within the agreement's dates"),
    "purpose_permitted": gettext_lazy("Purpose permitted"),
    "no_exited_participant": gettext_lazy("No participant exited or leaving"),
    "min_participants": gettext_lazy("Enough participants"),
    "dp_parameters": gettext_lazy("DP parameters within the terms"),
    "feature_schema": gettext_lazy("Feature schema matches"),
    "budget": gettext_lazy("Remaining budget covers the round"),
    "approvals": gettext_lazy("Required approvals"),
    # Round metrics shown with the same filter.
    "accuracy": gettext_lazy("Accuracy"),
    "test_accuracy": gettext_lazy("Held-out test accuracy"),
    "loss": gettext_lazy("Loss"),
}


@register.filter
def check_label(name: str) -> str:
    label = CHECK_LABELS.get(name)
    return str(label) if label is not None else str(name).replace("_", " ").capitalize()


@register.filter
def party_status(value: str) -> str:
    """A party's membership status (AgreementParty.Status value) in the active language."""
    from federation.models import AgreementParty

    try:
        return str(AgreementParty.Status(value).label)
    except ValueError:
        return str(value)


@register.filter
def ledger_kind(value: str) -> str:
    """A ledger entry's kind (GRANT, RESERVE, ...) in the active language."""
    from accounting.models import LedgerEntry

    try:
        return str(LedgerEntry.Kind(value).label)
    except ValueError:
        return str(value)


# The secure-aggregation protocol's step names, in words for people who never read the paper
# (issue 17); the protocol name stays in a tooltip for those who did.
PHASE_LABELS = {
    "advertise_keys": gettext_lazy("exchanging keys"),
    "share_keys": gettext_lazy("sharing key shares"),
    "masked_input": gettext_lazy("sending masked updates"),
    "unmask": gettext_lazy("unmasking the sum"),
    "unmask_response": gettext_lazy("unmasking the sum"),
    "aggregate": gettext_lazy("aggregating"),
    "evaluate": gettext_lazy("evaluating the model"),
}


@register.filter
def phase_label(name) -> str:
    if not name:
        return ""
    return str(PHASE_LABELS.get(str(name), str(name).replace("_", " ")))


@register.filter
def eps(value, digits: int = 3) -> str:
    """An epsilon (or any float) with a few significant digits; a dash for nothing."""
    if value is None or value == "":
        return "—"
    try:
        return f"{float(value):.{int(digits)}g}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def iso_datetime(value):
    """An ISO-8601 string (as stored in JSON: report times, verification times) as a datetime,
    so templates format it with |date like any other."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


@register.filter
def percent(value) -> str:
    if value is None:
        return "—"
    return f"{float(value) * 100:.1f} %"


@register.filter
def get_item(mapping, key):
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def duration(seconds) -> str:
    """Seconds as "1 min 05 s"."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@register.simple_tag
def budget_bar(spent, budget, cost=0.0):
    spent, cost, budget = float(spent or 0.0), float(cost or 0.0), float(budget or 0.0)
    label = _("%(spent)s of %(budget)s spent") % {"spent": f"{spent:.3g}", "budget": f"{budget:.3g}"}
    if cost:
        label += _(", this round %(cost)s") % {"cost": f"{cost:.3g}"}
    label += _(", %(remaining)s remaining") % {"remaining": f"{max(budget - spent, 0):.3g}"}
    return mark_safe(svgchart.budget_bar(spent=spent, cost=cost, budget=budget, label=label))


def _time_axis(times: list[datetime]):
    """x values (hours since the first entry) and a formatter that prints dates back."""
    start = times[0]
    span_s = (times[-1] - start).total_seconds()
    unit = 86400.0 if span_s > 3 * 86400 else 3600.0 if span_s > 3 * 3600 else 60.0 if span_s > 180 else 1.0
    tz = timezone.get_current_timezone()

    def fmt(x: float) -> str:
        moment = (start + timedelta(seconds=x * unit)).astimezone(tz)
        if unit >= 86400:
            return dateformat.format(moment, "d M")  # the month's abbreviation in the active language
        if unit >= 60:
            return moment.strftime("%H:%M")
        return moment.strftime("%H:%M:%S")

    label = _("date") if unit >= 86400 else _("time (UTC)")
    return [(t - start).total_seconds() / unit for t in times], fmt, label


@register.simple_tag
def ledger_chart(series, title=None):
    """Epsilon spent after each ledger entry, a step line against the budget in force.

    `series` is selectors.ledger_series(dataset): dicts with created_at, epsilon_spent_after
    and epsilon_budget, in chain order.
    """
    title = title or _("Epsilon spent over time")
    rows = list(series or [])
    if not rows:
        return mark_safe(svgchart.render(svgchart.Chart(title=title, series=[], empty_text=_("No ledger entry yet."))))
    times = [r["created_at"] for r in rows]
    xs, fmt, x_label = _time_axis(times)
    if xs[-1] == xs[0]:
        # Every entry in the same instant (tests, a seeded demo): plot by entry order instead.
        xs = [float(r["seq"]) for r in rows]
        fmt, x_label = (lambda v: f"#{v:g}"), _("ledger entry")
    spent = svgchart.Series(
        _("epsilon spent"), [(x, float(r["epsilon_spent_after"])) for x, r in zip(xs, rows)], step=True, css_class="spent"
    )
    budget = svgchart.Series(
        _("budget"), [(x, float(r["epsilon_budget"])) for x, r in zip(xs, rows)], step=True, dashed=True, css_class="budget"
    )
    chart = svgchart.Chart(title=title, series=[spent, budget], x_label=x_label, y_label=_("epsilon"), x_format=fmt)
    return mark_safe(svgchart.render(chart))


@register.simple_tag
def accuracy_chart(rows, title=None):
    """rows: [{"number", "accuracy", "test_accuracy"}] from selectors.plan_series."""
    title = title or _("Accuracy per round")
    rows = list(rows or [])
    series = []
    for key, name in (("accuracy", _("accuracy (partners, noisy)")), ("test_accuracy", _("held-out test accuracy"))):
        points = [(float(r["number"]), float(r[key])) for r in rows if r.get(key) is not None]
        # The partners' noisy accuracy carries its 95% interval (round metrics' accuracy_interval).
        band = (
            [(float(r["number"]), float(r["accuracy_interval"][0]), float(r["accuracy_interval"][1])) for r in rows if r.get("accuracy_interval")]
            if key == "accuracy"
            else []
        )
        if points:
            series.append(svgchart.Series(_("%(series)s with 95%% interval") % {"series": name} if band else name, points, css_class=key, band=band))
    chart = svgchart.Chart(
        title=title,
        series=series,
        x_label=_("round"),
        y_label=_("accuracy"),
        y_min=0.0,
        y_max=1.0,
        x_integer=True,
        y_format=lambda v: f"{v:.0%}" if v <= 1 else f"{v:g}",
        empty_text=_("No round has reported an accuracy yet."),
    )
    return mark_safe(svgchart.render(chart))


@register.simple_tag
def accuracy_interval_bar(metrics):
    """A round's accuracy with its 95% interval as a band, or nothing without an interval."""
    metrics = metrics or {}
    interval = metrics.get("accuracy_interval")
    if metrics.get("accuracy") is None or not interval:
        return ""
    value, low, high = float(metrics["accuracy"]), float(interval[0]), float(interval[1])
    label = _("accuracy %(value)s, 95%% interval %(low)s to %(high)s") % {
        "value": f"{value:.1%}",
        "low": f"{low:.1%}",
        "high": f"{high:.1%}",
    }
    return mark_safe(svgchart.interval_bar(value=value, low=low, high=high, label=label))


@register.simple_tag
def epsilon_charged_chart(charged, title=None):
    """charged: {dataset slug: {round number: epsilon the round added to the dataset's spent
    epsilon}}, from the ledger."""
    title = title or _("Epsilon charged by each round")
    series = [
        svgchart.Series(slug, sorted((float(n), float(e)) for n, e in charged[slug].items()), css_class="charged")
        for slug in sorted(charged or {})
    ]
    chart = svgchart.Chart(
        title=title,
        series=series,
        x_label=_("round"),
        y_label=_("epsilon"),
        x_integer=True,
        empty_text=_("No round has charged the ledger yet."),
    )
    return mark_safe(svgchart.render(chart))


@register.simple_tag
def epsilon_rounds_chart(cumulative, datasets=None, title=None):
    """cumulative: {dataset slug: {round number: epsilon spent after it}}; budgets as dashed
    lines when `datasets` (the plan's datasets) is given."""
    title = title or _("Epsilon spent per dataset, by round")
    series = []
    for slug in sorted(cumulative or {}):
        points = sorted((float(n), float(e)) for n, e in cumulative[slug].items())
        series.append(svgchart.Series(_("%(dataset)s spent") % {"dataset": slug}, points, css_class="spent"))
    numbers = [p[0] for s in series for p in s.points]
    if series and datasets:
        lo, hi = min(numbers), max(numbers)
        for d in datasets:
            if d.slug in (cumulative or {}):
                series.append(
                    svgchart.Series(
                        _("%(dataset)s budget") % {"dataset": d.slug},
                        [(lo, d.epsilon_budget), (hi, d.epsilon_budget)],
                        step=True,
                        dashed=True,
                        css_class="budget",
                    )
                )
    chart = svgchart.Chart(
        title=title,
        series=series,
        x_label=_("round"),
        y_label=_("epsilon"),
        x_integer=True,
        empty_text=_("No round has charged the ledger yet."),
    )
    return mark_safe(svgchart.render(chart))


@register.filter
def is_admin(user) -> bool:
    from federation.access import is_administrator

    return is_administrator(user)


@register.filter
def is_auditor_user(user) -> bool:
    from federation.access import is_auditor

    return is_auditor(user)


@register.filter
def ledger_readable(dataset, user) -> bool:
    """Whether `user` reads `dataset`'s ledger (federation.access): a link is shown only then."""
    from federation.access import may_read_ledger

    return may_read_ledger(user, dataset)


@register.filter
def is_representative(user) -> bool:
    from federation.access import organisations_of
    from federation.models import Membership

    return organisations_of(user, Membership.Role.REPRESENTATIVE).exists()


@register.filter
def refusal_words(code: str) -> str:
    """What an agent's refusal code means, in plain words ('' when unknown)."""
    from federation.services.agents import refusal_words as words

    text = words(code or "")
    return _(text) if text else ""
