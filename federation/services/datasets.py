"""Writes for datasets (metadata only) and their privacy budgets."""

from __future__ import annotations

from django.db import transaction

from fedgov.errors import InvalidState, ValidationFailed

from ..access import require_representative
from ..i18n import in_english
from ..models import Agreement, AgreementParty, Dataset, GovernanceEvent, Organisation
from .common import event_record, field_error, validated

MSG_BUDGET_ABOVE_TERMS = "The epsilon budget {budget} exceeds the agreement's maximum of {maximum}."
MSG_DELTA_ABOVE_TERMS = "Delta {delta} exceeds the agreement's maximum of {maximum}."
MSG_BUDGET_LOWERED = "A budget can only be raised ({current} now); privacy already spent cannot be given back."


def _check_schema(feature_names, label_name, label_classes, feature_bounds) -> None:
    if not isinstance(feature_names, list) or not feature_names or not all(isinstance(f, str) and f.strip() for f in feature_names):
        raise field_error("feature_names", "List the feature names (at least one, each a non-empty name).")
    if len(set(feature_names)) != len(feature_names):
        raise field_error("feature_names", "Feature names must be distinct.")
    if not isinstance(label_name, str) or not label_name.strip():
        raise field_error("label_name", "Name the label column.")
    if label_name in feature_names:
        raise field_error("label_name", "The label column cannot also be a feature.")
    if not isinstance(label_classes, list) or len(label_classes) < 2:
        raise field_error("label_classes", "List at least two label classes.")
    if len({str(c) for c in label_classes}) != len(label_classes):
        raise field_error("label_classes", "Label classes must be distinct.")
    if not feature_bounds:
        raise field_error("feature_bounds", "Declare public [low, high] bounds for every feature: partners scale with them, at no privacy cost.")
    if feature_bounds:
        if not isinstance(feature_bounds, list) or len(feature_bounds) != len(feature_names):
            raise field_error("feature_bounds", f"Give one [low, high] pair per feature ({len(feature_names)}).")
        for i, pair in enumerate(feature_bounds):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
                or not pair[0] < pair[1]
            ):
                raise field_error("feature_bounds", f"Bounds of {feature_names[i]!r} must be [low, high] numbers with low < high.")


def _check_scaling(feature_names, label_name, label_classes, feature_bounds, feature_transforms, centred) -> dict:
    """The declared transforms and centring, checked by the partners' own loader
    (learning.Schema), so the coordinator accepts exactly what an agent can load."""
    from ..learning import DataError, Schema

    if feature_transforms is None:
        feature_transforms = {}
    if not isinstance(feature_transforms, dict):
        raise field_error("feature_transforms", "Map feature names to transforms, e.g. {\"area\": \"log1p\"}.")
    if not isinstance(centred, bool):
        raise field_error("centred", "Centred is true or false.")
    try:
        schema = Schema(
            features=tuple(feature_names), label=label_name, classes=tuple(str(c) for c in label_classes),
            bounds=tuple(tuple(b) for b in feature_bounds),
            transforms=feature_transforms, centred=centred,
        )
    except DataError as exc:
        raise field_error("feature_transforms", str(exc)) from None
    return dict(schema.transforms)


def _check_terms(agreement: Agreement, *, epsilon_budget: float, delta: float) -> None:
    if epsilon_budget is None or epsilon_budget <= 0:
        raise field_error("epsilon_budget", "The epsilon budget must be greater than 0.")
    if delta is None or not (0 < delta < 1):
        raise field_error("delta", "Delta must be between 0 and 1 (exclusive).")
    if epsilon_budget > agreement.max_epsilon_budget:
        raise field_error("epsilon_budget", MSG_BUDGET_ABOVE_TERMS.format(budget=epsilon_budget, maximum=agreement.max_epsilon_budget))
    if delta > agreement.max_delta:
        raise field_error("delta", MSG_DELTA_ABOVE_TERMS.format(delta=delta, maximum=agreement.max_delta))


@transaction.atomic
def dataset_register(
    *,
    actor,
    organisation: Organisation,
    agreement: Agreement,
    slug: str,
    name: str,
    record_count: int,
    feature_names: list[str],
    label_name: str,
    label_classes: list,
    epsilon_budget: float,
    delta: float,
    feature_bounds: list | None = None,
    feature_transforms: dict | None = None,
    centred: bool = False,
    accountant: str = Dataset.Accountant.RDP,
) -> Dataset:
    """Register a dataset's metadata and open its budget ledger with a GRANT."""
    from accounting.services.budget import budget_grant

    require_representative(actor, organisation=organisation, agreement=agreement, action="register its datasets", allow_admin=True)
    party = AgreementParty.objects.filter(agreement=agreement, organisation=organisation).first()
    if party is None:
        raise field_error("organisation", f"{organisation.name} is not a party to '{agreement.title}'.")
    if party.effective_status() != AgreementParty.Status.ACTIVE:
        raise InvalidState(f"{organisation.name} has given exit notice from '{agreement.title}' and cannot register datasets.")
    if agreement.status in (Agreement.Status.TERMINATED, Agreement.Status.EXPIRED):
        raise InvalidState(f"'{agreement.title}' is {in_english(agreement.get_status_display()).lower()}.")
    if not isinstance(record_count, int) or isinstance(record_count, bool) or record_count < 1:
        raise field_error("record_count", "The record count must be a positive whole number.")
    _check_schema(feature_names, label_name, label_classes, feature_bounds)
    feature_transforms = _check_scaling(feature_names, label_name, label_classes, feature_bounds, feature_transforms, centred)
    _check_terms(agreement, epsilon_budget=epsilon_budget, delta=delta)
    if accountant not in Dataset.Accountant.values:
        raise field_error("accountant", f"Unknown accountant {accountant!r}; expected rdp or pld.")
    dataset = Dataset(
        organisation=organisation,
        agreement=agreement,
        slug=slug,
        name=name,
        record_count=record_count,
        feature_names=feature_names,
        label_name=label_name,
        label_classes=[str(c) for c in label_classes],
        feature_bounds=feature_bounds or [],
        feature_transforms=feature_transforms,
        centred=centred,
        epsilon_budget=float(epsilon_budget),
        delta=float(delta),
        accountant=accountant,
    )
    validated(dataset)
    dataset.save()
    budget_grant(dataset=dataset, epsilon_budget=dataset.epsilon_budget, actor=actor)
    event_record(
        kind=GovernanceEvent.Kind.DATASET_REGISTERED,
        message=f"{organisation.name} registered dataset {slug} ({record_count} records, epsilon budget {epsilon_budget}, delta {delta}).",
        actor=actor,
        agreement=agreement,
        organisation=organisation,
        details={"dataset": slug, "epsilon_budget": epsilon_budget, "delta": delta},
    )
    return dataset


@transaction.atomic
def dataset_raise_budget(*, actor, dataset: Dataset, epsilon_budget: float) -> Dataset:
    """Raise a dataset's budget (within the agreement's terms): a new GRANT on its ledger."""
    from accounting.services.budget import budget_grant

    dataset = Dataset.objects.select_for_update().select_related("agreement", "organisation").get(pk=dataset.pk)
    require_representative(
        actor, organisation=dataset.organisation, agreement=dataset.agreement, action="change its budgets", allow_admin=True
    )
    try:
        epsilon_budget = float(epsilon_budget)
    except (TypeError, ValueError):
        raise field_error("epsilon_budget", "The epsilon budget must be a number.") from None
    _check_terms(dataset.agreement, epsilon_budget=epsilon_budget, delta=dataset.delta)
    if epsilon_budget <= dataset.epsilon_budget:
        raise field_error("epsilon_budget", MSG_BUDGET_LOWERED.format(current=dataset.epsilon_budget))
    before = dataset.epsilon_budget
    dataset.epsilon_budget = epsilon_budget
    dataset.save(update_fields=["epsilon_budget"])
    budget_grant(dataset=dataset, epsilon_budget=epsilon_budget, actor=actor)
    event_record(
        kind=GovernanceEvent.Kind.BUDGET_CHANGED,
        message=f"Budget of {dataset.slug} raised from {before} to {epsilon_budget}.",
        actor=actor,
        agreement=dataset.agreement,
        organisation=dataset.organisation,
        details={"dataset": dataset.slug, "before": before, "after": epsilon_budget},
    )
    return dataset


def parse_number(value, *, field: str, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"{field} must be a number, got {value!r}.", fields={field: ["Enter a number."]}) from None
