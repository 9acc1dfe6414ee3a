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
from pathlib import Path

import numpy as np
import requests

from .. import learning, secagg
from . import trust
from .checks import PlanRefused, check_evaluation, check_round
from .config import AgentConfig
from .http import ApiError, CoordinatorClient
from .identity import PINNED_KEY_FILE, load_identity, public_hex
from .work import WORK_TTL, RoundWork

try:  # the partner's own privacy ledger (docs/PARTNER-LEDGER.md)
    from .ledger import PartnerLedger
    from .ledger_errors import LedgerError
    from .ledger_format import RoundKey, default_data_id
except ImportError:  # pragma: no cover - a build without it runs on the coordinator's word alone
    PartnerLedger = None

logger = logging.getLogger("fedgov.agent")


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
        if PartnerLedger is None:
            logger.warning("this agent has no partner ledger module: only the coordinator's ledger limits the budget")
            return None
        book = PartnerLedger.open(self.config.state_dir)
        self.data_id = self.config.data_id or default_data_id(self.config.data)
        if self.config.budget is not None:
            book.set_budget(self.data_id, epsilon=self.config.budget, delta=self.config.delta)
        return book

    @property
    def _pin_path(self) -> Path:
        return self.config.state_dir / PINNED_KEY_FILE

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
        book = self.local_ledger
        coordinator = self.coordinator_key or self.config.server
        key = RoundKey(coordinator=coordinator, round=round_pk, dataset=ticket["dataset"])
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
        except LedgerError as exc:
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
        except LedgerError as exc:
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
