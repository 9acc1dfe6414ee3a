"""A Hypothesis fuzzer over the partner agent's API (/api/v1/agent/), which the OpenAPI schema
(and so tests/api/test_schemathesis.py) cannot describe: protocol messages are raw bodies.

Requests go through Django's test client with real enrolled agent tokens, against a real round
whose phase the fuzzer moves: JSON envelopes with fields of every JSON type (NaN and Infinity
tokens included), real SecAggClient messages truncated, bit-flipped or padded, binary
masked-input bodies with forged headers and wrong lengths, oversized bodies, wrong rounds,
wrong phases, wrong senders and wrong content types. No answer may be a server error; every
refusal is a 4xx with a code."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import secagg
from federation.models import TrainingRound
from federation.services.protocol import ADVERTISE, AGENT_PHASES, AGGREGATE, EVALUATE, MASKED, SHARE, UNMASK, secagg_round_id
from tests.api.agents import AgentWorld, build_agent_world
from tests.tamper import force_update

pytestmark = pytest.mark.django_db

EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

PHASES = [*AGENT_PHASES, AGGREGATE, "key_list", "share_relay", "x", "advertise-keys"]
CONTENT_TYPES = ["application/json", "application/octet-stream", "text/plain", "application/json; charset=utf-8", ""]
MESSAGE_TYPES = [
    secagg.ADVERTISE_KEYS, secagg.KEY_LIST, secagg.SHARE_KEYS, secagg.SHARE_RELAY,
    secagg.MASKED_INPUT, secagg.UNMASK_REQUEST, secagg.UNMASK_RESPONSE,
]
ROUND_STATES = [
    (TrainingRound.Status.RUNNING, ADVERTISE),
    (TrainingRound.Status.RUNNING, SHARE),
    (TrainingRound.Status.RUNNING, MASKED),
    (TrainingRound.Status.RUNNING, UNMASK),
    (TrainingRound.Status.AGGREGATING, EVALUATE),
    (TrainingRound.Status.AGGREGATING, ""),
    (TrainingRound.Status.COMPLETED, ""),
    (TrainingRound.Status.AWAITING_APPROVAL, ""),
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)


@pytest.fixture(scope="function")
def world(db) -> AgentWorld:
    return build_agent_world()


def _config(world: AgentWorld):
    protocol = world.round.protocol
    cfg = protocol.config
    return secagg.RoundConfig(secagg_round_id(world.round), tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])


def _client(world: AgentWorld, slug: str):
    cfg = world.round.protocol.config
    identity = {p: bytes.fromhex(k) for p, k in cfg["identity_keys"].items()}
    return secagg.SecAggClient(_config(world), party=slug, signing_key=world.signing_keys[slug], identity_keys=identity)


@st.composite
def envelopes(draw, world: AgentWorld) -> bytes:
    """A JSON message shaped like the protocol's: v, type, round, then fields of any JSON type."""
    msg = {
        "v": draw(st.one_of(st.just(secagg.messages.VERSION), json_scalars)),
        "type": draw(st.one_of(st.sampled_from(MESSAGE_TYPES), json_scalars)),
        "round": draw(st.one_of(st.just(secagg_round_id(world.round)), json_values)),
    }
    for name in draw(st.lists(st.sampled_from(["sender", "keys", "shares", "ct", "cs", "sig", "pk_c", "pk_s", "survivors", "dropped", "d"]), max_size=5, unique=True)):
        msg[name] = draw(json_values)
    msg.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    return json.dumps(msg, allow_nan=True).encode()


@st.composite
def evaluations(draw) -> bytes:
    fields = {
        "noisy_correct": draw(json_values),
        "noisy_total": draw(json_values),
        "noise_multiplier": draw(st.one_of(st.just(8.0), json_values)),
    }
    if draw(st.booleans()):
        fields.pop(draw(st.sampled_from(sorted(fields))))
    return json.dumps(fields, allow_nan=True).encode()


@st.composite
def masked_inputs(draw, world: AgentWorld) -> bytes:
    d = world.round.protocol.config["vector_length"]
    header = {
        "v": draw(st.one_of(st.just(secagg.messages.VERSION), json_scalars)),
        "type": draw(st.sampled_from([secagg.MASKED_INPUT, "share_keys", ""])),
        "round": draw(st.one_of(st.just(secagg_round_id(world.round)), json_scalars)),
        "d": draw(st.one_of(st.just(d), json_scalars)),
    }
    header.update(draw(st.dictionaries(st.sampled_from(["sender", "sig", "x", "nonce"]), json_values, max_size=2)))
    raw = json.dumps(header, allow_nan=True).encode()
    declared = draw(st.one_of(st.just(len(raw)), st.integers(0, 2**16 - 1)))
    words = draw(st.one_of(st.just(d), st.integers(0, d + 3)))
    prefix = draw(st.sampled_from([secagg.messages.MAGIC, b"FGSB", b""])) + bytes([draw(st.integers(0, 255))])
    return prefix + struct.pack(">H", declared) + raw + draw(st.binary(min_size=4 * words, max_size=4 * words))


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "pad", "as_is"]))
    if kind == "truncate" and seed:
        return seed[: draw(st.integers(0, len(seed) - 1))]
    if kind == "flip" and seed:
        i = draw(st.integers(0, len(seed) - 1))
        return seed[:i] + bytes([seed[i] ^ (1 << draw(st.integers(0, 7)))]) + seed[i + 1 :]
    if kind == "pad":
        return seed + draw(st.binary(min_size=1, max_size=64))
    return seed


def bodies(world: AgentWorld, seeds: list[bytes]):
    return st.one_of(
        envelopes(world),
        evaluations(),
        masked_inputs(world),
        st.sampled_from(seeds).flatmap(lambda s: mutated(s)),
        st.binary(max_size=256),
        st.builds(lambda n: b"[" * n + b"]" * n, st.integers(500, 2100)),
        st.builds(lambda n: b'{"a": "' + b"x" * n + b'"}', st.sampled_from([5_000, 70_000, 2_000_000])),  # oversized
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    )


def assert_no_server_error(response, what) -> None:
    assert response.status_code < 500, (what, response.status_code, response.content[:500])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("code"), str) and body["code"], (what, body)


def test_the_agent_message_endpoint_never_answers_a_server_error(world):
    seeds = [_client(world, s).advertise_keys() for s in sorted(world.agents)]
    other_round = TrainingRound.objects.create(plan=world.cast.plan, number=99, status=TrainingRound.Status.RUNNING, phase=SHARE)
    statuses = set()

    @FUZZ
    @given(
        state=st.sampled_from(ROUND_STATES),
        sender=st.sampled_from(sorted(world.agents)),
        phase=st.one_of(st.sampled_from(PHASES), st.from_regex(r"\A[a-z_-]{1,20}\Z")),
        round_id=st.one_of(
            st.just(world.round.pk), st.just(other_round.pk), st.sampled_from([0, 2**31, 2**63, 2**64 + 1, 10**30])
        ),
        content_type=st.sampled_from(CONTENT_TYPES),
        body=bodies(world, seeds),
    )
    def fuzz(state, sender, phase, round_id, content_type, body):
        force_update(TrainingRound, world.round.pk, status=state[0], phase=state[1])
        world.round.refresh_from_db()
        response = world.client(sender).generic("POST", world.url(phase, round_id=round_id), body, content_type=content_type)
        statuses.add(response.status_code)
        assert_no_server_error(response, (state, sender, phase, round_id, content_type, body[:200]))

    fuzz()
    assert 200 in statuses or 400 in statuses  # the fuzzer reached the protocol, not only the URL checks


def test_a_real_round_driven_through_the_api_with_fuzzed_messages_in_between(world):
    """Valid messages still work after the fuzzer's refusals: the advertise phase of the real
    round takes each partner's real message, whatever garbage came before it."""
    valid = {s: _client(world, s).advertise_keys() for s in sorted(world.agents)}

    @FUZZ
    @given(sender=st.sampled_from(sorted(world.agents)), body=bodies(world, [valid["org-a"]]))
    def fuzz(sender, body):
        response = world.client(sender).post(world.url(ADVERTISE), body, content_type="application/json")
        assert_no_server_error(response, (sender, body[:200]))

    fuzz()
    for slug, message in valid.items():
        response = world.client(slug).post(world.url(ADVERTISE), message, content_type="application/json")
        assert response.status_code in (200, 400), response.content  # 400: the fuzzer's replay of a valid seed got in first
        if response.status_code == 400:
            assert response.json()["details"]["secagg_code"] == "replay"


def _would_wait(wait: str) -> bool:
    try:
        return float(wait) > 0
    except ValueError:
        return False


def test_enrolment_and_task_polling_never_answer_a_server_error(world):
    @FUZZ
    @given(
        body=st.one_of(
            json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
            st.fixed_dictionaries({"public_key": json_values}).map(lambda v: json.dumps(v, allow_nan=True).encode()),
            st.binary(max_size=128),
        ),
        content_type=st.sampled_from(CONTENT_TYPES),
        wait=st.one_of(st.sampled_from(["0", "nan", "-inf", "x", "", "1e999", "-5"]), st.text(max_size=8)),
    )
    def fuzz(body, content_type, wait):
        response = world.client("org-b").generic("POST", "/api/v1/agent/enrol/", body, content_type=content_type)
        assert_no_server_error(response, ("enrol", content_type, body[:200]))
        if not _would_wait(wait):  # a real long poll (no work for org-b) would hold the test
            response = world.client("org-b").get("/api/v1/agent/tasks/", {"wait": wait})
            assert_no_server_error(response, ("tasks", wait))

    fuzz()
