"""Database triggers guarding governance rows below the models (ARCHITECTURE.md, Trust 4).

The same rules as the model guards (federation/models.py, `guard_change`), for anyone who goes
around the models: raw SQL, a database console, another program.

* signed terms: out of draft, an agreement's terms, version and terms hash change only in an
  UPDATE that also bumps the version by one and sends it back to awaiting_signatures (what
  `agreement_amend` writes; the parties then sign the new hash again);
* a plan with a round keeps its DP and model parameters, and its datasets;
* a dataset with a ledger entry keeps its delta, accountant, record count, organisation and
  agreement;
* a round's status follows the state machine (ARCHITECTURE.md, Rounds), its phase only moves
  forward and matches its status, and its plan and number never change;
* a round approval is only inserted for an organisation with a dataset in the round and a
  party to the agreement, and never changes;
* an agreement's parties and auditors (part of its signed terms) are added, removed or
  re-pointed only in a draft or while the current version awaits its first signature
  (`Agreement.members_frozen`; federation/member_guards.py at the model level).

This module only declares the guards: `install_sql(vendor)` and `uninstall_sql(vendor)` for
the migrations, and `GOVERNANCE`, a set of the one trigger installer (accounting/triggers.py,
`TriggerSet`: `install`/`uninstall`/`installed`/`expected`) for the flush command and the tests. SQLite rebuilds a table to alter it, dropping its
triggers, so the app also re-installs them after every `migrate` (federation/apps.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from accounting.triggers import TriggerSet

from .models import TERM_FIELDS, TrainingPlan, TrainingRound

PREFIX = "fedguard_"


@dataclass(frozen=True)
class Guard:
    name: str
    table: str
    op: str  # INSERT, UPDATE or DELETE
    condition: str  # SQL over NEW / OLD, with {ne} for a null-safe "differs"
    message: str

    @property
    def trigger(self) -> str:
        return PREFIX + self.name

    def sql_condition(self, vendor: str) -> str:
        return self.condition.format(ne="IS NOT" if vendor == "sqlite" else "IS DISTINCT FROM")


def _differs(columns) -> str:
    return "(" + " OR ".join(f"OLD.{c} {{ne}} NEW.{c}" for c in columns) + ")"


def _quoted(values) -> str:
    return ", ".join("'" + v + "'" for v in values)


def _phase_rank(column: str) -> str:
    whens = " ".join(f"WHEN '{p}' THEN {i}" for i, p in enumerate(TrainingRound.PHASES))
    return f"(CASE {column} {whens} ELSE -1 END)"


def _column(model, name: str) -> str:
    return model._meta.get_field(name).column


_AGREEMENT_COLUMNS = (*TERM_FIELDS, "version", "terms_hash")
_PLAN_COLUMNS = tuple(_column(TrainingPlan, f) for f in TrainingPlan.GUARDED_FIELDS)
_PLAN_HAS_ROUND = "EXISTS (SELECT 1 FROM federation_traininground r WHERE r.plan_id = {row}.trainingplan_id)"
_TRANSITIONS = [f"{old}>{new}" for old, news in TrainingRound.TRANSITIONS.items() for new in news]
_FINAL = _quoted(TrainingRound.FINAL_STATES)
# The agreement of row {row} no longer takes a change of its parties or auditors.
_MEMBERS_FROZEN = (
    "EXISTS (SELECT 1 FROM federation_agreement a WHERE a.id = {row}.agreement_id AND a.status <> 'draft' "
    "AND (a.status <> 'awaiting_signatures' OR EXISTS (SELECT 1 FROM federation_agreementsignature s "
    "WHERE s.agreement_id = a.id AND s.version = a.version)))"
)


def _member_guards(kind: str, table: str, columns: tuple[str, ...]) -> tuple[Guard, ...]:
    message = f"the {kind} of a signed agreement change only by an amendment (a new version to sign)"
    return (
        Guard(f"{kind}_fixed_insert", table, "INSERT", _MEMBERS_FROZEN.format(row="NEW"), message),
        Guard(f"{kind}_fixed_delete", table, "DELETE", _MEMBERS_FROZEN.format(row="OLD"), message),
        Guard(
            f"{kind}_fixed_update",
            table,
            "UPDATE",
            f"{_differs(columns)} AND ({_MEMBERS_FROZEN.format(row='OLD')} OR {_MEMBERS_FROZEN.format(row='NEW')})",
            message,
        ),
    )
_RUNNING_PHASES = _quoted(TrainingRound.STATUS_PHASES[TrainingRound.Status.RUNNING])
_AGGREGATING_PHASES = _quoted(TrainingRound.STATUS_PHASES[TrainingRound.Status.AGGREGATING])

GUARDS = (
    Guard(
        "agreement_terms_signed",
        "federation_agreement",
        "UPDATE",
        "OLD.status <> 'draft' AND " + _differs(_AGREEMENT_COLUMNS) + " AND NOT (OLD.status IN ('awaiting_signatures', "
        "'active', 'suspended') AND NEW.status = 'awaiting_signatures' AND NEW.version = OLD.version + 1)",
        "signed agreement terms change only by an amendment (version + 1, awaiting signatures)",
    ),
    Guard(
        "plan_parameters_fixed",
        "federation_trainingplan",
        "UPDATE",
        "EXISTS (SELECT 1 FROM federation_traininground r WHERE r.plan_id = OLD.id) AND " + _differs(_PLAN_COLUMNS),
        "a plan with rounds keeps its parameters: a change is a new plan",
    ),
    Guard(
        "plan_datasets_fixed_insert",
        "federation_trainingplan_datasets",
        "INSERT",
        _PLAN_HAS_ROUND.format(row="NEW"),
        "a plan with rounds keeps its datasets: a change is a new plan",
    ),
    Guard(
        "plan_datasets_fixed_update",
        "federation_trainingplan_datasets",
        "UPDATE",
        _PLAN_HAS_ROUND.format(row="OLD"),
        "a plan with rounds keeps its datasets: a change is a new plan",
    ),
    Guard(
        "plan_datasets_fixed_delete",
        "federation_trainingplan_datasets",
        "DELETE",
        _PLAN_HAS_ROUND.format(row="OLD"),
        "a plan with rounds keeps its datasets: a change is a new plan",
    ),
    Guard(
        "dataset_budgeted",
        "federation_dataset",
        "UPDATE",
        "EXISTS (SELECT 1 FROM accounting_ledgerentry e WHERE e.dataset_id = OLD.id) AND "
        + _differs(("organisation_id", "agreement_id", "delta", "accountant", "record_count")),
        "a dataset with a budget ledger keeps its delta, accountant, record count and owner",
    ),
    Guard(
        "round_identity_fixed",
        "federation_traininground",
        "UPDATE",
        _differs(("plan_id", "number")),
        "a round keeps its plan and number",
    ),
    Guard(
        "round_status_transition",
        "federation_traininground",
        "UPDATE",
        f"OLD.status <> NEW.status AND (OLD.status || '>' || NEW.status) NOT IN ({_quoted(_TRANSITIONS)})",
        "round status transition not in the state machine",
    ),
    Guard(
        "round_phase_forward",
        "federation_traininground",
        "UPDATE",
        f"(OLD.phase <> NEW.phase AND NOT (NEW.status = 'completed' AND NEW.phase = '') AND (OLD.status IN ({_FINAL}) "
        f"OR {_phase_rank('NEW.phase')} < 0 OR {_phase_rank('NEW.phase')} <= {_phase_rank('OLD.phase')})) "
        f"OR ((OLD.phase <> NEW.phase OR OLD.status <> NEW.status) AND ((NEW.status = 'running' AND NEW.phase NOT IN "
        f"({_RUNNING_PHASES})) OR (NEW.status = 'aggregating' AND NEW.phase NOT IN ({_AGGREGATING_PHASES}))))",
        "round phase may only move forward, within its status",
    ),
    Guard(
        "approval_involved",
        "federation_roundapproval",
        "INSERT",
        "NOT EXISTS (SELECT 1 FROM federation_roundparticipant rp "
        "JOIN federation_dataset d ON d.id = rp.dataset_id "
        "JOIN federation_traininground r ON r.id = rp.round_id "
        "JOIN federation_trainingplan p ON p.id = r.plan_id "
        "JOIN federation_agreementparty ap ON ap.agreement_id = p.agreement_id AND ap.organisation_id = d.organisation_id "
        "WHERE rp.round_id = NEW.round_id AND d.organisation_id = NEW.organisation_id)",
        "only an organisation with a dataset in the round decides on it",
    ),
    Guard(
        "approval_fixed",
        "federation_roundapproval",
        "UPDATE",
        _differs(("round_id", "organisation_id", "decision")),
        "a recorded round decision never changes",
    ),
    *_member_guards("parties", "federation_agreementparty", ("agreement_id", "organisation_id")),
    *_member_guards("auditors", "federation_agreement_auditors", ("agreement_id", "user_id")),
)


def _pg_function(guard: Guard) -> str:
    row = "OLD" if guard.op == "DELETE" else "NEW"
    return (
        f"CREATE OR REPLACE FUNCTION {guard.trigger}_fn() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n"
        f"    IF {guard.sql_condition('postgresql')} THEN\n"
        f"        RAISE EXCEPTION '{guard.table}: {guard.message} ({guard.op} refused)' USING ERRCODE = 'restrict_violation';\n"
        f"    END IF;\n"
        f"    RETURN {row};\n"
        f"END\n$$;"
    )


def install_sql(vendor: str) -> list[str]:
    statements: list[str] = []
    for guard in GUARDS:
        if vendor == "sqlite":
            statements.append(f"DROP TRIGGER IF EXISTS {guard.trigger}")
            statements.append(
                f"CREATE TRIGGER {guard.trigger} BEFORE {guard.op} ON {guard.table} FOR EACH ROW "
                f"WHEN {guard.sql_condition('sqlite')} "
                f"BEGIN SELECT RAISE(ABORT, '{guard.table}: {guard.message} ({guard.op} refused)'); END"
            )
        elif vendor == "postgresql":
            statements.append(_pg_function(guard))
            statements.append(f"DROP TRIGGER IF EXISTS {guard.trigger} ON {guard.table}")
            statements.append(
                f"CREATE TRIGGER {guard.trigger} BEFORE {guard.op} ON {guard.table} FOR EACH ROW EXECUTE FUNCTION {guard.trigger}_fn()"
            )
        else:
            raise NotImplementedError(f"no governance triggers for database vendor {vendor!r}")
    return statements


def uninstall_sql(vendor: str) -> list[str]:
    statements: list[str] = []
    for guard in GUARDS:
        if vendor == "sqlite":
            statements.append(f"DROP TRIGGER IF EXISTS {guard.trigger}")
        elif vendor == "postgresql":
            statements.append(f"DROP TRIGGER IF EXISTS {guard.trigger} ON {guard.table}")
            statements.append(f"DROP FUNCTION IF EXISTS {guard.trigger}_fn()")
    return statements


GOVERNANCE = TriggerSet(install_sql=install_sql, uninstall_sql=uninstall_sql, names=(guard.trigger for guard in GUARDS))
