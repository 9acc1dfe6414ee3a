"""factory_boy factories and the shared cast of actors (ARCHITECTURE.md, Conventions 10)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from federation.models import (
    ADMINISTRATORS_GROUP,
    AUDITORS_GROUP,
    Agreement,
    Dataset,
    Membership,
    Organisation,
    TrainingPlan,
)
from federation.services.agreements import agreement_create, agreement_sign, agreement_submit
from federation.services.datasets import dataset_register
from federation.services.plans import plan_create

User = get_user_model()
FEATURES = ["age", "bmi", "glucose"]
BOUNDS = [[0, 120], [10, 60], [40, 400]]


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw")


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())
    kind = Organisation.Kind.HOSPITAL


def in_group(user, name: str):
    group, _ = Group.objects.get_or_create(name=name)
    user.groups.add(group)
    if hasattr(user, "_fedgov_groups"):
        del user._fedgov_groups
    return user


def member(user, organisation, role=Membership.Role.REPRESENTATIVE):
    Membership.objects.get_or_create(user=user, organisation=organisation, role=role)
    return user


DEFAULT_TERMS = dict(
    title="Diabetes risk consortium",
    purposes=["diabetes risk research", "model evaluation"],
    min_participants=2,
    min_noise_multiplier=0.8,
    max_clip_norm=2.0,
    max_delta=1e-5,
    max_epsilon_per_round=4.0,
    max_epsilon_budget=10.0,
    approval_rule=Agreement.ApprovalRule.EVERY_PARTY,
    exit_notice_days=30,
    data_retention="Updates kept for the agreement's life.",
)


def terms(**overrides) -> dict:
    today = date.today()
    out = dict(DEFAULT_TERMS, valid_from=today - timedelta(days=1), valid_until=today + timedelta(days=365))
    out.update(overrides)
    return out


@dataclass
class Cast:
    """Everyone a permission test needs, around one active agreement between orgs A, B, C."""

    admin: object
    rep_a: object
    rep_b: object
    rep_c: object
    auditor: object
    other_auditor: object
    outsider: object
    agent_a: object
    org_a: Organisation
    org_b: Organisation
    org_c: Organisation
    agreement: Agreement
    datasets: list
    plan: TrainingPlan

    @property
    def dataset_a(self) -> Dataset:
        return self.datasets[0]


def build_cast(*, agreement_terms: dict | None = None, plan_overrides: dict | None = None, budget: float = 8.0) -> Cast:
    admin = in_group(UserFactory(username="admin"), ADMINISTRATORS_GROUP)
    auditor = in_group(UserFactory(username="auditor"), AUDITORS_GROUP)
    other_auditor = in_group(UserFactory(username="other-auditor"), AUDITORS_GROUP)
    outsider = UserFactory(username="outsider")
    org_a, org_b, org_c = (OrganisationFactory(slug=s, name=n) for s, n in (("org-a", "Org A"), ("org-b", "Org B"), ("org-c", "Org C")))
    rep_a = member(UserFactory(username="rep-a"), org_a)
    rep_b = member(UserFactory(username="rep-b"), org_b)
    rep_c = member(UserFactory(username="rep-c"), org_c)
    agent_a = member(UserFactory(username="agent-a"), org_a, Membership.Role.AGENT)
    agreement = agreement_create(actor=admin, parties=[org_a, org_b, org_c], auditors=[auditor], **terms(**(agreement_terms or {})))
    agreement = agreement_submit(actor=admin, agreement=agreement)
    for org, rep in ((org_a, rep_a), (org_b, rep_b), (org_c, rep_c)):
        agreement_sign(actor=rep, agreement=agreement, organisation=org, terms_hash=agreement.terms_hash)
    agreement.refresh_from_db()
    datasets = []
    for org, rep, n in ((org_a, rep_a, 400), (org_b, rep_b, 300), (org_c, rep_c, 500)):
        datasets.append(
            dataset_register(
                actor=rep,
                organisation=org,
                agreement=agreement,
                slug=f"{org.slug}-records",
                name=f"{org.name} records",
                record_count=n,
                feature_names=list(FEATURES),
                label_name="outcome",
                label_classes=["no", "yes"],
                feature_bounds=[list(b) for b in BOUNDS],
                epsilon_budget=budget,
                delta=1e-5,
            )
        )
    plan_kwargs = dict(
        actor=admin,
        agreement=agreement,
        name="Risk model",
        purpose="diabetes risk research",
        datasets=datasets,
        model_spec={"kind": "logreg"},
        rounds_total=5,
        noise_multiplier=1.1,
        clip_norm=1.0,
        batch_size=32,
        local_steps=5,
        # Casts with small budgets exist to test the round-time budget check: their plan is
        # accepted although its later rounds cannot all be paid for (services.plan_checks.plan_check).
        allow_partial=True,
    )
    plan_kwargs.update(plan_overrides or {})
    plan = plan_create(**plan_kwargs)
    return Cast(admin, rep_a, rep_b, rep_c, auditor, other_auditor, outsider, agent_a, org_a, org_b, org_c, agreement, datasets, plan)
