"""services/protocol.py, the secure-aggregation glue, on its own: it answers with outcomes and
never moves the round (the lifecycle, services/rounds.py, acts on them), and it never imports
the lifecycle or the tasks."""

from __future__ import annotations

import ast
import base64
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.utils import timezone

from federation import secagg
from federation.models import AgentIdentity, ProtocolMessage, ProtocolRelay, RoundParticipant, RoundProtocol, TrainingRound
from federation.services.aggregation import latest_model
from federation.services.protocol import (
    ADVERTISE,
    AGGREGATE,
    MASKED,
    SHARE,
    UNMASK,
    Next,
    ProtocolRejected,
    protocol_accept,
    protocol_close,
    protocol_open,
    protocol_server,
)

pytestmark = pytest.mark.django_db

SERVICES = Path(__file__).resolve().parents[3] / "federation" / "services"
LATER = timedelta(days=1)


@pytest.fixture
def made(secagg_round):
    return secagg_round(3, "pg")


def _link(round, slug):
    return RoundParticipant.objects.select_related("dataset__organisation").get(round=round, dataset__organisation__slug=slug)


def _clients(made):
    cfg = RoundProtocol.objects.get(round=made.round).config
    config = secagg.RoundConfig(f"round-{made.round.pk}", tuple(cfg["roster"]), cfg["threshold"], cfg["vector_length"])
    identity = {p: bytes.fromhex(k) for p, k in cfg["identity_keys"].items()}
    return {s: secagg.SecAggClient(config, party=s, signing_key=made.keys[s], identity_keys=identity) for s in sorted(made.agents)}


def _fresh(round):
    return TrainingRound.objects.select_related("plan").get(pk=round.pk)


def _move(round, phase, status=None):
    """What the lifecycle does on ADVANCED (the tests act for it)."""
    TrainingRound.objects.filter(pk=round.pk).update(phase=phase, **({"status": status} if status else {}))
    return _fresh(round)


def test_accepting_a_message_says_when_the_phase_is_done_and_never_moves_the_round(made):
    round, slugs = made.round, sorted(made.agents)
    clients = _clients(made)
    outcomes = [protocol_accept(round=round, link=_link(round, s), phase=ADVERTISE, body=clients[s].advertise_keys()) for s in slugs]
    assert [o.next for o in outcomes] == [Next.ACCEPTED, Next.ACCEPTED, Next.PHASE_DONE]
    assert all(o.result == {"accepted": True} for o in outcomes)
    assert RoundProtocol.objects.get(round=round).pending == []
    round = _fresh(round)
    assert (round.status, round.phase) == (TrainingRound.Status.RUNNING, ADVERTISE)


def test_a_refused_message_raises_and_stores_nothing(made):
    round, slug = made.round, sorted(made.agents)[0]
    before = RoundProtocol.objects.get(round=round).state
    with pytest.raises(ProtocolRejected) as info:
        protocol_accept(round=round, link=_link(round, slug), phase=ADVERTISE, body=b'{"type": "advertise_keys"}')
    assert info.value.details["secagg_code"] in {"malformed", "wrong_round"}
    assert RoundProtocol.objects.get(round=round).state == before
    assert _link(round, slug).last_phase == ""


def test_closing_before_the_deadline_waits_and_after_it_with_too_few_answers_says_abort(made):
    round, slugs = made.round, sorted(made.agents)
    clients = _clients(made)
    protocol_accept(round=round, link=_link(round, slugs[0]), phase=ADVERTISE, body=clients[slugs[0]].advertise_keys())
    assert protocol_close(round=round, phase=ADVERTISE, now=timezone.now()).next is Next.WAITING
    assert not ProtocolRelay.objects.filter(round=round).exists()
    outcome = protocol_close(round=round, phase=ADVERTISE, now=timezone.now() + LATER)
    assert outcome.next is Next.ABORT
    assert outcome.reason.startswith("Secure aggregation stopped in advertise_keys")
    # The ones it waited for are dropouts; the round itself is the lifecycle's to stop.
    assert {_link(round, s).status for s in slugs[1:]} == {RoundParticipant.Status.DROPPED}
    round = _fresh(round)
    assert (round.status, round.phase) == (TrainingRound.Status.RUNNING, ADVERTISE)


def test_the_phases_advance_then_the_sum_is_ready_to_aggregate(made):
    round, slugs = made.round, sorted(made.agents)
    clients = _clients(made)
    for s in slugs:
        protocol_accept(round=round, link=_link(round, s), phase=ADVERTISE, body=clients[s].advertise_keys())
    outcome = protocol_close(round=round, phase=ADVERTISE, now=timezone.now())
    assert (outcome.next, outcome.phase) == (Next.ADVANCED, SHARE)
    assert _fresh(round).phase == ADVERTISE  # the protocol never moves the round
    round = _move(round, SHARE)
    key_list = base64.b64decode(ProtocolRelay.objects.get(round=round, phase=SHARE).body)
    for s in slugs:
        protocol_accept(round=round, link=_link(round, s), phase=SHARE, body=clients[s].share_keys(key_list))
    assert protocol_close(round=round, phase=SHARE, now=timezone.now()).phase == MASKED
    round = _move(round, MASKED)
    d = RoundProtocol.objects.get(round=round).config["vector_length"]
    inputs = {s: np.full(d, i + 1, dtype=np.uint32) for i, s in enumerate(slugs)}
    for s in slugs:
        relay = base64.b64decode(ProtocolRelay.objects.get(round=round, phase=MASKED, party=s).body)
        protocol_accept(round=round, link=_link(round, s), phase=MASKED, body=clients[s].masked_input(relay, inputs[s]))
    assert protocol_close(round=round, phase=MASKED, now=timezone.now()).phase == UNMASK
    round = _move(round, UNMASK, TrainingRound.Status.AGGREGATING)
    request = base64.b64decode(ProtocolRelay.objects.get(round=round, phase=UNMASK).body)
    for s in slugs:
        protocol_accept(round=round, link=_link(round, s), phase=UNMASK, body=clients[s].unmask(request))
    outcome = protocol_close(round=round, phase=UNMASK, now=timezone.now())
    assert (outcome.next, outcome.phase) == (Next.AGGREGATE, AGGREGATE)
    assert not ProtocolRelay.objects.filter(round=round).exists()
    assert ProtocolMessage.objects.filter(round=round, phase=UNMASK).count() == len(slugs)
    assert protocol_server(RoundProtocol.objects.get(round=round)).can_finalize


def test_opening_with_too_few_enrolled_agents_says_abort_and_stores_no_protocol(made):
    round = made.round
    RoundProtocol.objects.filter(round=round).delete()
    AgentIdentity.objects.exclude(organisation__slug=sorted(made.agents)[0]).update(revoked_at=timezone.now())
    outcome = protocol_open(round=round, model=latest_model(round.plan))
    assert outcome.next is Next.ABORT
    assert outcome.reason.startswith("Only 1 participant(s) have an enrolled agent")
    assert not RoundProtocol.objects.filter(round=round).exists()
    assert _fresh(round).status == TrainingRound.Status.RUNNING


def _imports(path: Path) -> set[str]:
    """The federation.services modules (and federation.tasks) that `path` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:  # from .x import y / from . import x
                out |= {mod} if mod else {a.name for a in node.names}
            elif node.level == 2 and (mod == "tasks" or (not mod and any(a.name == "tasks" for a in node.names))):
                out.add("..tasks")
            elif mod.startswith("federation.services."):
                out.add(mod.rsplit(".", 1)[1])
    return out


def test_no_service_imports_the_tasks_and_the_protocol_glue_never_reaches_the_lifecycle():
    graph = {p.stem: _imports(p) for p in SERVICES.glob("*.py")}
    assert not [m for m, deps in graph.items() if "..tasks" in deps], "services enqueue by name (services/enqueue.py)"

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for dep in graph.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    assert "rounds" not in reach("protocol")
    cycles = [m for m in graph if m in reach(m)]
    assert cycles == [], f"import cycle through {cycles}"
