"""The agent's loop: enrol, poll for work, train, take part in every secure-aggregation phase.

One `RoundWork` per live round keeps what the agent needs between phases (its secure
aggregation client, its quantised update, the model) and the exact bytes it sent in each
phase. Everything that leaves the agent is logged with its size, so a partner's IT staff can
see exactly what was sent.

A message whose POST was lost (the coordinator restarting, a dropped connection) is asked
for again by the next poll; the agent then sends the same bytes again rather than computing
a new message: a second training run would be a second noisy release of the same records,
and a second set of masks would not match the first. The coordinator answers a copy it
already holds with `replay`, which the agent counts as delivered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accounting import accountant as acc

from .. import learning, secagg
from . import trust
from .http import ApiError, CoordinatorClient

try:  # the partner's own privacy ledger (docs/PARTNER-LEDGER.md)
    from . import ledger as partner_ledger
except ImportError:  # pragma: no cover - a build without it runs on the coordinator's word alone
    partner_ledger = None

logger = logging.getLogger("fedgov.agent")


class PlanRefused(Exception):
    """The agent declines a round: an unsigned or mismatched ticket, parameters outside the
    terms it enrolled under, its local budget. `code` is stable (the coordinator stores it
    and shows it with the reason); the message says why in words."""

    def __init__(self, message: str, code: str = "outside_terms") -> None:
        super().__init__(message)
        self.code = code


# Below this, a Gaussian count release is no protection at all (sigma=1e-9 releases the true
# counts); an agreement's own floor (min_noise_multiplier) applies when it is higher.
EVAL_NOISE_FLOOR = 0.5
# The agent's epsilon and the coordinator's come from the same dp-accounting code; this only
# absorbs a different libm.
EPSILON_RTOL = 1e-9


@dataclass
class AgentConfig:
    server: str
    token: str
    data: Path
    state_dir: Path
    dropout: float = 0.0  # probability of skipping a round's masked input (simulations)
    eval_fraction: float = 0.2
    poll_wait: float = 10.0
    send_retry: float = 60.0  # seconds a message is retried before waiting to be asked again
    seed: int | None = None  # tests only: the coordinator never chooses a partner's noise
    coordinator_key: str | None = None  # pinned ledger key (hex); None: pinned at first enrolment
    eval_noise_floor: float = EVAL_NOISE_FLOOR
    # The partner's own ledger (docs/PARTNER-LEDGER.md)
    data_id: str | None = None  # None: the data file's resolved path
    budget: float | None = None  # the operator's local epsilon budget (None: the smallest shown)
    delta: float | None = None


@dataclass
class RoundWork:
    round_pk: int
    config: secagg.RoundConfig
    client: secagg.SecAggClient
    update: np.ndarray | None = None
    spec: dict = field(default_factory=dict)
    skip_masked_input: bool = False
    sent: dict[str, tuple[bytes, bool]] = field(default_factory=dict)  # phase -> (body, binary)
    started: float = field(default_factory=time.monotonic)
    ticket: dict = field(default_factory=dict)  # the verified ticket the round runs
    ticket_hash: str = ""
    dataset: str = ""  # the coordinator's dataset slug the round ran on
    data_key: str = ""  # which local split the round trained on: it evaluates on the same
    local_key: object = None  # the round's key in the partner ledger, once reserved
    committed: bool = False  # the partner ledger committed it (the masked input may have left)
    receipt: dict | None = None  # signed, not yet accepted by the coordinator


WORK_TTL = 24 * 3600.0  # a round's keys and update are forgotten a day after it began

#: Test hook: FEDGOV_AGENT_CRASH_AFTER=local_reserve makes the agent SIGKILL itself right after
#: a round's RESERVE is durable in its own ledger (tests/integration/test_trust.py), the crash
#: a restart must survive without training the round again. Unset in any deployment.
CRASH_AFTER_ENV = "FEDGOV_AGENT_CRASH_AFTER"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AFTER_ENV) == name:
        import signal

        logger.critical("%s=%s: killing this agent (SIGKILL) as the test asked", CRASH_AFTER_ENV, name)
        for handler in logging.getLogger().handlers + logger.handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)

def load_identity(state_dir: Path) -> Ed25519PrivateKey:
    """The long-term Ed25519 identity key, created on first run and kept (0600) in state_dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "identity_ed25519.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_coordinator_key(value: str) -> str:
    """--coordinator-key: 64 hex digits, or a file holding them or a PEM public key."""
    text = value.strip()
    path = Path(text)
    if not (len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)) and path.is_file():
        data = path.read_bytes()
        if b"BEGIN PUBLIC KEY" in data:
            key = serialization.load_pem_public_key(data)
            return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        text = data.decode().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("--coordinator-key must be a raw Ed25519 public key (64 hex digits), or a file holding one or its PEM")
    return raw.hex()


def _refuse_if(problems: list[str], code: str) -> None:
    if problems:
        raise PlanRefused("; ".join(problems), code)


def check_round(round_pk: int, payload: dict, *, coordinator_key: str | None, terms: list[dict], organisation: str | None,
                eval_noise_floor: float = EVAL_NOISE_FLOOR) -> tuple[dict, str]:
    """Every check before the agent touches its data for a round. Returns (ticket, its hash).

    1. the ticket is signed by the pinned coordinator key (`ticket_unsigned`, `ticket_malformed`,
       `ticket_signature`);
    2. it is this round's ticket and matches what the task shows: the plan's parameters, the
       global model, the secure-aggregation round, the RESERVE's event (`ticket_mismatch`);
    3. it is under an agreement this organisation holds, at the version and terms it holds
       (`agreement_unknown`, `terms_mismatch`), and every parameter is inside those terms
       (`outside_terms`), the evaluation noise above the floor (`eval_noise_too_low`), and the
       round's composed epsilon, training and evaluation, at the dataset's delta, at most the
       per-round ceiling (`epsilon_over_ceiling`).
    """
    if not coordinator_key:
        raise PlanRefused("no coordinator ledger key is pinned: no ticket can be trusted", "ticket_signature")
    try:
        ticket_hash = trust.ticket_verify(payload.get("ticket"), bytes.fromhex(coordinator_key))
    except trust.TrustError as exc:
        raise PlanRefused(str(exc), exc.code) from None
    ticket = payload["ticket"]
    plan, dp, model = payload.get("plan") or {}, (payload.get("plan") or {}).get("dp") or {}, payload.get("model") or {}
    cfg = payload.get("config") or {}

    # 2. the ticket is this round's, and the task agrees with it
    problems = []
    shown = {
        "round": round_pk, "secagg_round_id": cfg.get("round_id"), "organisation": organisation,
        "q": dp.get("q"), "z": dp.get("z"), "K": dp.get("K"), "C": dp.get("C"),
        "eval_noise": dp.get("eval_noise_multiplier"), "eval_count": dp.get("eval_count"),
        "delta": plan.get("delta"), "model_spec": plan.get("model_spec"), "learning_rate": plan.get("learning_rate"),
        "momentum": plan.get("momentum"), "weight": plan.get("weight"), "quant": plan.get("quant"),
        "agreement_id": plan.get("agreement"), "start_model_sha256": model.get("sha256"), "model_version": model.get("version"),
        "records": (payload.get("dataset") or {}).get("record_count"),
    }
    for name, value in shown.items():
        if ticket[name] != value:
            problems.append(f"{name}: the ticket says {ticket[name]!r}, the task {value!r}")
    try:
        event = acc.dataset_round_event({
            "q": ticket["q"], "z": ticket["z"], "K": ticket["K"],
            "eval_noise_multiplier": ticket["eval_noise"], "eval_count": ticket["eval_count"],
        })
        if acc.event_key(ticket["event"]) != acc.canonical_json(event):
            problems.append("the ticket's event is not the event of its q, z, K and evaluation")
    except (acc.InvalidDpEvent, ValueError, TypeError, KeyError) as exc:
        raise PlanRefused(f"the ticket's DP parameters do not make a valid event: {exc}", "ticket_mismatch") from None
    _refuse_if(problems, "ticket_mismatch")

    # 3. the terms this organisation holds
    agreement = next((t for t in terms if t["agreement"] == ticket["agreement_id"]), None)
    if agreement is None:
        raise PlanRefused(f"the round is under agreement {ticket['agreement_id']}, which this organisation had not signed when the agent enrolled", "agreement_unknown")
    _refuse_if(
        [f"agreement {name}: the ticket says {ticket[mine]!r}, this organisation holds {agreement[name]!r}"
         for mine, name in (("agreement_version", "version"), ("terms_hash", "terms_hash")) if ticket[mine] != agreement[name]],
        "terms_mismatch",
    )
    problems = []
    if not (isinstance(ticket["q"], (int, float)) and 0 < ticket["q"] <= 1) or not (isinstance(ticket["K"], int) and ticket["K"] >= 1):
        problems.append(f"sampling rate {ticket['q']} / steps {ticket['K']} break the accounting")
    if ticket["z"] < agreement["min_noise_multiplier"]:
        problems.append(f"noise multiplier {ticket['z']} < floor {agreement['min_noise_multiplier']}")
    if ticket["C"] > agreement["max_clip_norm"]:
        problems.append(f"clip norm {ticket['C']} > ceiling {agreement['max_clip_norm']}")
    if ticket["delta"] > agreement["max_delta"]:
        problems.append(f"delta {ticket['delta']} > ceiling {agreement['max_delta']}")
    _refuse_if(problems, "outside_terms")
    if ticket["eval_noise"] is not None:
        floor = max(eval_noise_floor, agreement["min_noise_multiplier"])
        if ticket["eval_noise"] < floor:
            raise PlanRefused(f"evaluation noise multiplier {ticket['eval_noise']} < floor {floor}", "eval_noise_too_low")
        if ticket["eval_count"] != 2:  # this agent releases two counts (correct, total)
            raise PlanRefused(f"the ticket charges {ticket['eval_count']} evaluation counts; this agent releases 2", "ticket_mismatch")
    elif ticket["eval_count"] != 0:
        raise PlanRefused("the ticket charges evaluation counts without evaluation noise", "ticket_mismatch")
    eps = acc.compose_epsilon([event], ticket["delta"], ticket["accountant"])
    ceiling = agreement["max_epsilon_per_round"]
    if eps > ceiling * (1 + EPSILON_RTOL):
        raise PlanRefused(
            f"one round costs epsilon {eps:.4g} at delta {ticket['delta']} (training and evaluation), above the per-round ceiling {ceiling}",
            "epsilon_over_ceiling",
        )
    return ticket, ticket_hash


def check_evaluation(payload: dict, work: RoundWork) -> float:
    """The evaluation the coordinator asks for is the one the round's ticket charged, on the
    round's own dataset. Returns the noise multiplier to use (the ticket's)."""
    ticket = work.ticket
    if ticket.get("eval_noise") is None:
        raise PlanRefused("the round's ticket charged no evaluation release", "ticket_mismatch")
    if payload.get("eval_noise_multiplier") != ticket["eval_noise"]:
        raise PlanRefused(
            f"evaluation noise {payload.get('eval_noise_multiplier')!r} is not the ticket's {ticket['eval_noise']!r}", "ticket_mismatch"
        )
    if payload.get("dataset") != work.dataset:
        raise PlanRefused(f"evaluation asked on dataset {payload.get('dataset')!r}; the round trained on {work.dataset!r}", "ticket_mismatch")
    return ticket["eval_noise"]


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.http = CoordinatorClient(config.server, config.token)
        self.identity = load_identity(config.state_dir)
        self.organisation: str | None = None
        self.terms: list[dict] = []
        self.work: dict[int, RoundWork] = {}
        self._data_cache: dict[str, tuple] = {}
        self._stop = False
        self._refused: set[int] = set()  # rounds whose plan this agent refused
        self._rng = random.Random(config.seed)
        self.coordinator_key: str | None = None  # the pinned ledger key (hex)
        self.local_ledger = self._open_local_ledger()

    # -- setup -------------------------------------------------------------------------------

    def _open_local_ledger(self):
        """The partner's own privacy ledger (docs/PARTNER-LEDGER.md), in the state directory."""
        if partner_ledger is None:
            logger.warning("this agent has no partner ledger module: only the coordinator's ledger limits the budget")
            return None
        book = partner_ledger.PartnerLedger.open(self.config.state_dir)
        self.data_id = self.config.data_id or partner_ledger.default_data_id(self.config.data)
        if self.config.budget is not None:
            book.set_budget(self.data_id, epsilon=self.config.budget, delta=self.config.delta)
        return book

    @property
    def _pin_path(self) -> Path:
        return self.config.state_dir / "coordinator_ledger_key.hex"

    def enrol(self) -> None:
        answer = self.http.enrol(public_hex(self.identity))
        self.organisation = answer["organisation"]
        self.terms = answer["terms"]
        logger.info("enrolled for %s with key %s…; %d agreement(s) in force", self.organisation, answer["public_key"][:16], len(self.terms))
        self._pin_coordinator_key(answer.get("coordinator_key"))

    def _pin_coordinator_key(self, announced: str | None) -> None:
        """Pin the coordinator's ledger key: --coordinator-key if given, else the key pinned at
        the first enrolment (kept in the state directory), else the one announced now. An
        announced key that differs from the pin is refused: every ticket it signs is then
        declined (`ticket_signature`), so the coordinator is told why on every round."""
        stored = self._pin_path.read_text().strip() if self._pin_path.exists() else None
        pinned = self.config.coordinator_key or stored
        if pinned is None and announced:
            pinned = announced
            logger.info("pinned the coordinator's ledger key at first enrolment")
        if pinned and pinned != stored:
            self._pin_path.write_text(pinned + "\n")
        self.coordinator_key = pinned
        if pinned is None:
            logger.error("the coordinator announced no ledger key and none is pinned (--coordinator-key): every round will be declined")
            return
        logger.info("coordinator ledger key fingerprint %s", trust.fingerprint(bytes.fromhex(pinned)))
        if announced != pinned:
            logger.error(
                "REFUSED the coordinator's ledger key %s: this agent pins %s; every round ticket will be declined",
                trust.fingerprint(bytes.fromhex(announced)) if announced else "(none)", trust.fingerprint(bytes.fromhex(pinned)),
            )

    def data(self, schema: dict):
        """The local data, loaded and checked against the dataset's declared schema."""
        return self._data_cache[self._data_key(schema)]

    def _data_key(self, schema: dict) -> str:
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        if key not in self._data_cache:
            s = learning.Schema.from_declaration(schema)
            X, y = learning.load_csv(self.config.data, s)
            self._data_cache[key] = learning.train_eval_split(X, y, eval_fraction=self.config.eval_fraction, seed=self.config.seed)
            logger.info("loaded %d records from %s (%d for training)", len(X), self.config.data, len(self._data_cache[key][0]))
        return key

    # -- the loop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop = True

    def run(self, *, max_seconds: float | None = None) -> None:
        self.enrol()
        end = time.monotonic() + max_seconds if max_seconds else None
        while not self._stop and (end is None or time.monotonic() < end):
            try:
                answer = self.http.poll(wait=self.config.poll_wait)
            except ApiError as exc:
                if exc.status in (401, 403):
                    logger.error("coordinator refused this agent: %s", exc)
                    raise
                logger.warning("polling failed: %s", exc)
                time.sleep(1)
                continue
            self.learn_terms(answer.get("terms"))
            for task in answer.get("tasks", []):
                self.handle(task)
            self.settle_ended_rounds(answer.get("rounds"), answer.get("tasks", []))
            self._forget_stale_work()

    def learn_terms(self, terms: list[dict] | None) -> None:
        """Adopt the terms the coordinator hands out on each poll: an agreement signed or
        amended since enrolment is then known (its rounds are still checked against them)."""
        if terms is None:  # a coordinator that does not send them: keep the enrolment's
            return
        old = {t["agreement"]: t.get("terms_hash") for t in self.terms}
        new = {t["agreement"]: t.get("terms_hash") for t in terms}
        if old != new:
            logger.info(
                "terms updated: %d agreement(s) in force (%s)", len(terms),
                ", ".join(f"#{t['agreement']} v{t.get('version')}" for t in terms) or "none",
            )
        self.terms = list(terms)

    def settle_ended_rounds(self, live: list[int] | None, tasks: list[dict]) -> None:
        """Release the local reservation of every round this agent holds work for that asks
        nothing more of it (the coordinator no longer lists it: ended, or this partner was
        dropped) while its masked input never left: nothing computed from the data left this
        machine, whatever the coordinator does. A committed round is never released (the
        masked input may have left) and its work expires as before. A coordinator that does not list
        its rounds (`live` None) leaves the work to expire."""
        if live is None:
            return
        keep = set(live) | {task["round"] for task in tasks}
        for round_pk in [pk for pk, work in self.work.items() if pk not in keep and not work.committed]:
            logger.info("round %s: ended for this agent before its masked input was sent; releasing it", round_pk)
            self._local_release(self.work.pop(round_pk), "the round ended before this agent sent its masked input")

    def _forget_stale_work(self) -> None:
        now = time.monotonic()
        for round_pk in [pk for pk, work in self.work.items() if now - work.started > WORK_TTL]:
            logger.info("round %s: forgetting its keys and update (older than %.0f h)", round_pk, WORK_TTL / 3600)
            del self.work[round_pk]

    def handle(self, task: dict) -> None:
        round_pk, phase, payload = task["round"], task["phase"], task["payload"]
        try:
            handler = {
                secagg.ADVERTISE_KEYS: self._advertise,
                secagg.SHARE_KEYS: self._share,
                secagg.MASKED_INPUT: self._masked_input,
                secagg.UNMASK_RESPONSE: self._unmask,
                "evaluate": self._evaluate,
            }[phase]
        except KeyError:
            logger.error("round %s: unknown phase %r; ignored", round_pk, phase)
            return
        work = self.work.get(round_pk)
        try:
            if work is not None and work.receipt is not None:
                self._send_receipt(work)  # it goes with the round's next message
            if work is not None and phase in work.sent:
                body, binary = work.sent[phase]
                logger.info("round %s: the coordinator asks for %s again; sending the same %d bytes", round_pk, phase, len(body))
                self._deliver(round_pk, phase, body, binary=binary)
            else:
                handler(round_pk, payload)
        except PlanRefused as exc:
            self._decline(round_pk, exc)
        except (learning.LearningError, ValueError) as exc:
            logger.error("round %s: %s; nothing sent", round_pk, exc)
            self._local_release(self.work.pop(round_pk, None), f"not run: {exc}")
        except ApiError as exc:
            if exc.code == "phase_closed":
                logger.info("round %s: %s is closed (%s)", round_pk, phase, exc.message)
            else:
                logger.error("round %s: coordinator refused our %s message: %s", round_pk, phase, exc)
        except requests.RequestException as exc:
            # Kept: the next poll asks for this phase again if the message never arrived.
            logger.warning("round %s: could not deliver %s (%s); will send it again when asked", round_pk, phase, exc)
        except secagg.SecAggError as exc:
            logger.error("round %s: protocol error in %s: %s; leaving the round", round_pk, phase, exc)
            self._local_release(self.work.pop(round_pk, None), f"left the round: {exc}")

    def _decline(self, round_pk: int, exc: PlanRefused) -> None:
        """Refuse the round and tell the coordinator why (it shows the code and reason)."""
        logger.error("round %s: REFUSED (%s): %s; not taking part", round_pk, exc.code, exc)
        self._local_release(self.work.pop(round_pk, None), f"refused ({exc.code}): {exc}")
        self._refused.add(round_pk)
        try:
            self.http.refuse(round_pk, exc.code, str(exc), retry_for=self.config.send_retry)
        except (ApiError, requests.RequestException) as err:
            logger.warning("round %s: could not tell the coordinator about the refusal: %s", round_pk, err)

    # -- the partner's own ledger (docs/PARTNER-LEDGER.md) -----------------------------------

    def _local_reserve(self, round_pk: int, ticket: dict, ticket_hash: str):
        """Reserve the round's event in the partner ledger before training; None without one."""
        if self.local_ledger is None:
            return None
        book, errors = self.local_ledger, partner_ledger
        coordinator = self.coordinator_key or self.config.server
        key = errors.RoundKey(coordinator=coordinator, round=round_pk, dataset=ticket["dataset"])
        existing = book.reservation_for(key)
        if existing is not None:
            # Reserved by an earlier process (which may have trained and lost its update): a
            # second training run would be a second noisy release of the same records, so the
            # round is not run again. If that process never committed it, its masked input
            # never left (COMMIT is written before it is sent) and this agent declines now:
            # nothing computed from the data left, so the reservation is released. A
            # committed one stays charged.
            if existing.state == "reserved":
                self._release_key(round_pk, key, "an earlier run of this agent reserved it and sent no masked input; declined")
            raise PlanRefused(
                f"the partner ledger has round {round_pk} {existing.state} already (an earlier run of this agent); it is not run twice",
                "round_already_run",
            )
        try:
            book.record_shown_budget(self.data_id, coordinator=coordinator, dataset=ticket["dataset"], epsilon=ticket["epsilon_budget"], delta=ticket["delta"])
            book.reserve(key, data_id=self.data_id, event=ticket["event"], ticket_hash=ticket_hash, data_path=self.config.data)
        except errors.LedgerError as exc:
            raise PlanRefused(exc.message, exc.code) from None
        crash_point("local_reserve")
        return key

    def _local_commit(self, work: RoundWork) -> None:
        """Write-ahead: before the masked input leaves, the round can never be released."""
        if self.local_ledger is not None and work.local_key is not None and not work.committed:
            self.local_ledger.commit(work.local_key)
        work.committed = True

    def _local_release(self, work: RoundWork | None, reason: str) -> None:
        """Give the round back to the partner ledger: only while no update left this machine."""
        if work is not None and not work.committed:
            self._release_key(work.round_pk, work.local_key, reason)

    def _release_key(self, round_pk: int, key, reason: str) -> None:
        if self.local_ledger is None or key is None:
            return
        try:
            self.local_ledger.release(key, reason=reason)
        except partner_ledger.LedgerError as exc:
            logger.error("round %s: the partner ledger refused the release: %s", round_pk, exc)

    def _local_head(self) -> str | None:
        return self.local_ledger.head_hash if self.local_ledger is not None else None

    # -- receipts ----------------------------------------------------------------------------

    def _sign_receipt(self, work: RoundWork) -> dict:
        receipt = {
            "round": work.ticket["round"],
            "dataset": work.ticket["dataset"],
            "ticket_hash": work.ticket_hash,
            "event": work.ticket["event"],
            "local_ledger_head": self._local_head(),
            "agent_public_key": public_hex(self.identity),
        }
        return trust.receipt_sign(receipt, self.identity)

    def _send_receipt(self, work: RoundWork) -> None:
        """Deliver the round's receipt; kept and sent again with the next message if it fails."""
        try:
            self.http.receipt(work.round_pk, work.receipt, retry_for=self.config.send_retry)
        except requests.RequestException as exc:
            logger.warning("round %s: receipt not delivered (%s); it goes with the next message", work.round_pk, exc)
            return
        except ApiError as exc:
            if exc.status >= 500:
                logger.warning("round %s: receipt not delivered (%s); it goes with the next message", work.round_pk, exc)
                return
            logger.error("round %s: the coordinator refused our receipt: %s", work.round_pk, exc)
        else:
            logger.info("round %s: receipt for ticket %s… delivered", work.round_pk, work.ticket_hash[:16])
        work.receipt = None

    def _send(self, round_pk: int, phase: str, body: bytes, *, binary: bool = False) -> None:
        """Keep the message with the round's work (see the module doc), then deliver it."""
        work = self.work.get(round_pk)
        if work is not None:
            work.sent[phase] = (body, binary)
        self._deliver(round_pk, phase, body, binary=binary)

    def _deliver(self, round_pk: int, phase: str, body: bytes, *, binary: bool) -> None:
        logger.info("round %s: sending %s (%d bytes)", round_pk, phase, len(body))
        try:
            self.http.submit(round_pk, phase, body, binary=binary, retry_for=self.config.send_retry)
        except ApiError as exc:
            if not exc.is_replay:
                raise
            logger.info("round %s: the coordinator already had our %s message", round_pk, phase)
        if phase == "evaluate":
            self.work.pop(round_pk, None)  # the round's last message: nothing more to keep

    # -- phases ------------------------------------------------------------------------------

    def _advertise(self, round_pk: int, payload: dict) -> None:
        if round_pk in self._refused:
            return
        # The ticket is what runs: every DP and training parameter below is the ticket's.
        ticket, ticket_hash = check_round(
            round_pk, payload, coordinator_key=self.coordinator_key, terms=self.terms, organisation=self.organisation,
            eval_noise_floor=self.config.eval_noise_floor,
        )
        model = payload["model"]
        raw = self._model_bytes(model)
        if hashlib.sha256(raw).hexdigest() != ticket["start_model_sha256"]:
            raise PlanRefused("the global model does not match the ticket's start_model_sha256", "ticket_mismatch")
        params = np.frombuffer(raw, dtype=np.float32).copy()
        data_key = self._data_key(payload["dataset"]["schema"])
        X_train, y_train, _, _ = self._data_cache[data_key]
        local_key = self._local_reserve(round_pk, ticket, ticket_hash)
        try:
            update, used = learning.train_round(
                params, ticket["model_spec"], X_train, y_train,
                q=ticket["q"], z=ticket["z"], C=ticket["C"], K=ticket["K"], lr=ticket["learning_rate"], momentum=ticket["momentum"],
                seed=self.config.seed,
            )
            if (used["q"], used["z"], used["K"]) != (ticket["q"], ticket["z"], ticket["K"]):
                raise ValueError(f"DP-SGD ran {used}, the ticket charged q={ticket['q']} z={ticket['z']} K={ticket['K']}")
        except Exception:
            self._release_key(round_pk, local_key, "training failed; nothing sent")
            raise
        quant = learning.QuantSpec(**ticket["quant"])
        x = learning.secagg_input(update, ticket["weight"], quant)
        cfg = payload["config"]
        config = secagg.RoundConfig(round_id=cfg["round_id"], roster=tuple(cfg["roster"]), threshold=cfg["threshold"], vector_length=cfg["vector_length"])
        client = secagg.SecAggClient(
            config,
            party=self.organisation,
            signing_key=self.identity,
            identity_keys={p: bytes.fromhex(k) for p, k in payload["identity_keys"].items()},
        )
        work = RoundWork(
            round_pk, config, client, update=x, spec=ticket["model_spec"], ticket=ticket, ticket_hash=ticket_hash,
            dataset=payload["dataset"]["slug"], data_key=data_key, local_key=local_key,
        )
        work.skip_masked_input = self._rng.random() < self.config.dropout
        self.work[round_pk] = work
        self._send(round_pk, secagg.ADVERTISE_KEYS, client.advertise_keys())

    def _model_bytes(self, model: dict) -> bytes:
        """The parameters a task names: downloaded raw from its `url` (a coordinator that
        inlines them as base64 `params` is still understood). The caller checks the SHA-256."""
        if "params" in model:
            return base64.b64decode(model["params"])
        url = model.get("url")
        if not isinstance(url, str) or not url.startswith("rounds/") or ".." in url:
            raise ValueError(f"the task names no model the agent API serves: {url!r}")
        return self.http.model(url, retry_for=self.config.send_retry)

    def _relay(self, payload: dict) -> bytes:
        return base64.b64decode(payload["relay"])

    def _share(self, round_pk: int, payload: dict) -> None:
        work = self.work.get(round_pk)
        if work is None:
            return  # not taking part (refused plan, or restarted mid-round)
        self._send(round_pk, secagg.SHARE_KEYS, work.client.share_keys(self._relay(payload)))

    def _masked_input(self, round_pk: int, payload: dict) -> None:
        work = self.work.get(round_pk)
        if work is None:
            return
        if work.skip_masked_input:
            logger.info("round %s: dropping out before the masked input (simulated dropout)", round_pk)
            self._local_release(self.work.pop(round_pk, None), "dropped out before the masked input")
            return
        body = work.client.masked_input(self._relay(payload), work.update)
        work.update = None  # the plain update is not needed any more
        self._local_commit(work)  # from here on the update may have left this machine
        work.receipt = self._sign_receipt(work)
        self._send(round_pk, secagg.MASKED_INPUT, body, binary=True)
        self._send_receipt(work)

    def _unmask(self, round_pk: int, payload: dict) -> None:
        work = self.work.get(round_pk)
        if work is None:
            return
        self._send(round_pk, secagg.UNMASK_RESPONSE, work.client.unmask(self._relay(payload)))

    def _evaluate(self, round_pk: int, payload: dict) -> None:
        work = self.work.get(round_pk)
        if work is None:
            return
        model = payload["model"]
        raw = self._model_bytes(model)
        if hashlib.sha256(raw).hexdigest() != model["sha256"]:
            raise ValueError("the new global model does not match its announced SHA-256")
        params = np.frombuffer(raw, dtype=np.float32)
        sigma = check_evaluation(payload, work)
        _, _, X_eval, y_eval = self._data_cache[work.data_key]  # the round's own dataset
        release, _ = learning.release_evaluation(params, work.spec, X_eval, y_eval, sigma=sigma)
        if release is None:
            self.work.pop(round_pk, None)
            return
        self._send(round_pk, "evaluate", json.dumps(release.to_dict()).encode())
