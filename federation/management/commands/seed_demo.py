"""python manage.py seed_demo [--password PW]: the demo federation, idempotently."""

from __future__ import annotations

import secrets
from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from federation.models import (
    ADMINISTRATORS_GROUP,
    AUDITORS_GROUP,
    Agreement,
    AgreementSignature,
    Dataset,
    Membership,
    Organisation,
    TrainingPlan,
)
from federation.services.agreements import agreement_create, agreement_sign, agreement_submit
from federation.services.datasets import dataset_register
from federation.services.organisations import membership_add, organisation_create
from federation.services.plans import plan_create
from harness import demo

AGREEMENT_TITLE = "Breast cancer screening consortium"
PLAN_NAME = "Screening model (logistic regression)"


class Command(BaseCommand):
    help = "Create the demo federation (three hospitals, a signed agreement, datasets, a plan). Safe to run again."

    def add_arguments(self, parser):
        parser.add_argument("--password", help="give every demo user this password (otherwise generated and printed)")

    def handle(self, *args, **opts):
        password = opts.get("password")
        if password is not None and len(password) < 4:
            from django.core.management.base import CommandError

            raise CommandError("--password must have at least 4 characters.")
        with transaction.atomic():
            logins = self._seed(password)
        self.stdout.write(self.style.SUCCESS("Demo federation ready. Logins:"))
        for username, pw, what in logins:
            self.stdout.write(f"  {username:<20} {pw:<24} {what}")

    def _user(self, username: str, password: str | None, logins: list, what: str, *, superuser=False):
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@demo.fedgov.invalid"})
        pw = password or secrets.token_urlsafe(9)
        user.set_password(pw)
        user.is_staff = superuser
        user.is_superuser = superuser
        user.save()
        logins.append((username, pw, what))
        return user

    def _seed(self, password: str | None) -> list:
        logins: list = []
        admins, _ = Group.objects.get_or_create(name=ADMINISTRATORS_GROUP)
        auditors, _ = Group.objects.get_or_create(name=AUDITORS_GROUP)
        admin = self._user("admin", password, logins, "federation administrator", superuser=True)
        admin.groups.add(admins)
        auditor = self._user("auditor", password, logins, "auditor of the consortium")
        auditor.groups.add(auditors)
        orgs, reps = [], []
        for slug, name in demo.HOSPITALS:
            org = Organisation.objects.filter(slug=slug).first() or organisation_create(
                actor=admin, slug=slug, name=name, kind=Organisation.Kind.HOSPITAL
            )
            orgs.append(org)
            rep = self._user(f"rep-{slug}", password, logins, f"representative of {name}")
            reps.append(rep)
            if not Membership.objects.filter(user=rep, organisation=org, role=Membership.Role.REPRESENTATIVE).exists():
                membership_add(actor=admin, user=rep, organisation=org, role=Membership.Role.REPRESENTATIVE)
            agent_user, _ = get_user_model().objects.get_or_create(username=f"agent-{slug}")
            agent_user.set_unusable_password()
            agent_user.save()
            if not Membership.objects.filter(user=agent_user, organisation=org, role=Membership.Role.AGENT).exists():
                membership_add(actor=admin, user=agent_user, organisation=org, role=Membership.Role.AGENT)

        agreement = Agreement.objects.filter(title=AGREEMENT_TITLE).first()
        if agreement is None:
            today = date.today()
            agreement = agreement_create(
                actor=admin,
                parties=orgs,
                auditors=[auditor],
                title=AGREEMENT_TITLE,
                purposes=[demo.PURPOSE, "model quality evaluation"],
                valid_from=today - timedelta(days=1),
                valid_until=today + timedelta(days=730),
                min_participants=2,
                min_noise_multiplier=0.8,
                max_clip_norm=5.0,
                max_delta=1e-5,
                max_epsilon_per_round=3.0,
                max_epsilon_budget=10.0,
                approval_rule=Agreement.ApprovalRule.EVERY_PARTY,
                exit_notice_days=30,
                data_retention="Model updates are kept for the life of the agreement; no record leaves a hospital.",
            )
        if agreement.status == Agreement.Status.DRAFT:
            agreement = agreement_submit(actor=admin, agreement=agreement)
        if agreement.status == Agreement.Status.AWAITING_SIGNATURES:
            for org, rep in zip(orgs, reps):
                if not AgreementSignature.objects.filter(agreement=agreement, organisation=org, version=agreement.version).exists():
                    agreement_sign(actor=rep, agreement=agreement, organisation=org, terms_hash=agreement.terms_hash)
        schema = demo.schema()
        _, _, labels = demo.breast_cancer_table()
        sizes = [len(p) for p in demo.non_iid_split(labels, len(orgs))]
        datasets = []
        for org, rep, size in zip(orgs, reps, sizes):
            slug = f"{org.slug}-screening"
            dataset = Dataset.objects.filter(slug=slug).first() or dataset_register(
                actor=rep,
                organisation=org,
                agreement=agreement,
                slug=slug,
                name=f"{org.name} screening records",
                record_count=size,
                epsilon_budget=8.0,
                delta=1e-5,
                **schema,
            )
            datasets.append(dataset)
        if not TrainingPlan.objects.filter(name=PLAN_NAME, agreement=agreement).exists():
            from harness.simulation import DEFAULT_PLAN, SAMPLING_RATE, calibrate_noise

            batch = max(1, round(SAMPLING_RATE * min(sizes)))
            # Ten rounds, evaluation releases included, must fit every hospital's budget of 8.
            z = calibrate_noise(
                q=batch / min(sizes), K=DEFAULT_PLAN["local_steps"], rounds=10, epsilon=8.0, delta=1e-5,
                eval_sigma=DEFAULT_PLAN["eval_noise_multiplier"],
            )
            plan_create(
                actor=admin,
                agreement=agreement,
                name=PLAN_NAME,
                purpose=demo.PURPOSE,
                datasets=datasets,
                rounds_total=10,
                noise_multiplier=round(z, 3) + 0.001,
                batch_size=batch,
                phase_timeout_seconds=60,
                **DEFAULT_PLAN,
            )
        return logins
