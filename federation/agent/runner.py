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

from .. import learning, secagg
from .http import ApiError, CoordinatorClient

logger = logging.getLogger("fedgov.agent")


class PlanRefused(Exception):
    """The coordinator asked for a round outside the terms this agent enrolled under."""


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


WORK_TTL = 24 * 3600.0  # a round's keys and update are forgotten a day after it began

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


def check_plan(plan: dict, terms: list[dict]) -> None:
    """Refuse a plan whose DP parameters are outside the agreement terms seen at enrolment."""
    agreement = next((t for t in terms if t["agreement"] == plan.get("agreement")), None)
    if agreement is None:
        raise PlanRefused(f"plan {plan.get('name')!r} is under agreement {plan.get('agreement')}, which this organisation had not signed when the agent enrolled")
    dp = plan["dp"]
    problems = []
    if dp["z"] < agreement["min_noise_multiplier"]:
        problems.append(f"noise multiplier {dp['z']} < floor {agreement['min_noise_multiplier']}")
    if dp["C"] > agreement["max_clip_norm"]:
        problems.append(f"clip norm {dp['C']} > ceiling {agreement['max_clip_norm']}")
    if plan["delta"] > agreement["max_delta"]:
        problems.append(f"delta {plan['delta']} > ceiling {agreement['max_delta']}")
    if not (0 < dp["q"] <= 1) or dp["K"] < 1:
        problems.append(f"sampling rate {dp['q']} / steps {dp['K']} break the accounting")
    if problems:
        raise PlanRefused("; ".join(problems))


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

    # -- setup -------------------------------------------------------------------------------

    def enrol(self) -> None:
        answer = self.http.enrol(public_hex(self.identity))
        self.organisation = answer["organisation"]
        self.terms = answer["terms"]
        logger.info("enrolled for %s with key %s…; %d agreement(s) in force", self.organisation, answer["public_key"][:16], len(self.terms))

    def data(self, schema: dict):
        """The local data, loaded and checked against the dataset's declared schema."""
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        if key not in self._data_cache:
            s = learning.Schema.from_declaration(schema)
            X, y = learning.load_csv(self.config.data, s)
            self._data_cache[key] = learning.train_eval_split(X, y, eval_fraction=self.config.eval_fraction, seed=self.config.seed)
            logger.info("loaded %d records from %s (%d for training)", len(X), self.config.data, len(self._data_cache[key][0]))
        return self._data_cache[key]

    # -- the loop ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop = True

    def run(self, *, max_seconds: float | None = None) -> None:
        self.enrol()
        end = time.monotonic() + max_seconds if max_seconds else None
        while not self._stop and (end is None or time.monotonic() < end):
            try:
                tasks = self.http.tasks(wait=self.config.poll_wait)
            except ApiError as exc:
                if exc.status in (401, 403):
                    logger.error("coordinator refused this agent: %s", exc)
                    raise
                logger.warning("polling failed: %s", exc)
                time.sleep(1)
                continue
            for task in tasks:
                self.handle(task)
            self._forget_stale_work()

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
            if work is not None and phase in work.sent:
                body, binary = work.sent[phase]
                logger.info("round %s: the coordinator asks for %s again; sending the same %d bytes", round_pk, phase, len(body))
                self._deliver(round_pk, phase, body, binary=binary)
            else:
                handler(round_pk, payload)
        except PlanRefused as exc:
            logger.error("round %s: plan refused, not taking part: %s", round_pk, exc)
            self.work.pop(round_pk, None)
            self._refused.add(round_pk)
        except (learning.LearningError, ValueError) as exc:
            logger.error("round %s: %s; nothing sent", round_pk, exc)
            self.work.pop(round_pk, None)
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
            self.work.pop(round_pk, None)

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
        plan = payload["plan"]
        check_plan(plan, self.terms)
        model = payload["model"]
        raw = base64.b64decode(model["params"])
        if hashlib.sha256(raw).hexdigest() != model["sha256"]:
            raise ValueError("the global model does not match its announced SHA-256")
        params = np.frombuffer(raw, dtype=np.float32).copy()
        X_train, y_train, _, _ = self.data(payload["dataset"]["schema"])
        dp = plan["dp"]
        update, used = learning.train_round(
            params, plan["model_spec"], X_train, y_train,
            q=dp["q"], z=dp["z"], C=dp["C"], K=dp["K"], lr=plan["learning_rate"], momentum=plan["momentum"], seed=self.config.seed,
        )
        if (used["q"], used["z"], used["K"]) != (dp["q"], dp["z"], dp["K"]):
            raise ValueError(f"DP-SGD ran {used}, the plan charged {dp}")
        quant = learning.QuantSpec(**plan["quant"])
        x = learning.secagg_input(update, plan["weight"], quant)
        cfg = payload["config"]
        config = secagg.RoundConfig(round_id=cfg["round_id"], roster=tuple(cfg["roster"]), threshold=cfg["threshold"], vector_length=cfg["vector_length"])
        client = secagg.SecAggClient(
            config,
            party=self.organisation,
            signing_key=self.identity,
            identity_keys={p: bytes.fromhex(k) for p, k in payload["identity_keys"].items()},
        )
        work = RoundWork(round_pk, config, client, update=x, spec=plan["model_spec"])
        work.skip_masked_input = self._rng.random() < self.config.dropout
        self.work[round_pk] = work
        self._send(round_pk, secagg.ADVERTISE_KEYS, client.advertise_keys())

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
            self.work.pop(round_pk, None)
            return
        body = work.client.masked_input(self._relay(payload), work.update)
        work.update = None  # the plain update is not needed any more
        self._send(round_pk, secagg.MASKED_INPUT, body, binary=True)

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
        raw = base64.b64decode(model["params"])
        if hashlib.sha256(raw).hexdigest() != model["sha256"]:
            raise ValueError("the new global model does not match its announced SHA-256")
        params = np.frombuffer(raw, dtype=np.float32)
        schema_key = next(iter(self._data_cache))
        _, _, X_eval, y_eval = self._data_cache[schema_key]
        release, _ = learning.release_evaluation(params, work.spec, X_eval, y_eval, sigma=payload["eval_noise_multiplier"])
        if release is None:
            self.work.pop(round_pk, None)
            return
        self._send(round_pk, "evaluate", json.dumps(release.to_dict()).encode())
