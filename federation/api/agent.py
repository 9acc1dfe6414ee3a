"""The partner agent's API (/api/v1/agent/): enrolment, task polling, protocol messages.

Only a token with the `agent` scope, held by a member with the agent role, gets in; it sees
its own organisation's tasks only. Protocol messages are raw bodies (JSON, or the binary
masked input), size-checked against the round's configuration before anything parses them.
"""

from __future__ import annotations

import mmap
import tempfile
import time
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import parsers, permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from fedgov.errors import NotFound, ValidationFailed

from .. import secagg, wakeup
from ..models import ApiToken
from ..selectors.rounds import round_protocol_config
from ..services.agent_rounds import (
    REFUSAL_CODE_MAX,
    REFUSAL_REASON_MAX,
    agent_model,
    agent_receipt,
    agent_refuse,
    agent_rounds_taking_part,
    agent_submit,
    agent_tasks,
)
from ..services.agents import agent_enrol, agent_poll, agent_terms
from ..services.protocol import AGENT_PHASES, EVALUATE
from .base import Input, ReadsBody, StrictJSONParser, parse_json
from .errors import MessageTooLarge
from .fields import valid_pk

MAX_WAIT_SECONDS = 25
EVALUATION_MAX_BYTES = 4096
MSG_UNKNOWN_PHASE = "Unknown phase {phase!r}: a partner posts one of {phases}."


class UnknownPhase(NotFound):
    """The URL names no phase a partner posts to (e.g. `aggregate`, which the server runs)."""

    code = "unknown_phase"


class IsAgentToken(permissions.BasePermission):
    message = "Partner agent endpoints need a token with the 'agent' scope."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiToken) and ApiToken.Scope.AGENT in request.auth.scopes


class RawBodyParser(parsers.BaseParser):
    """Accepts any body; the view reads request.body itself (protocol messages are bytes)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return {}


class AgentView(ReadsBody, APIView):
    parser_classes = [StrictJSONParser]
    permission_classes = [permissions.IsAuthenticated, IsAgentToken]
    #: A body over this size is refused (413) before anything parses it; None: no limit here
    #: (the protocol phases check their own per-phase limits).
    max_body_bytes: int | None = None
    message_name = "message"

    def initial(self, request, *args, **kwargs):
        if self.max_body_bytes is not None and request.method in ("POST", "PUT", "PATCH"):
            declared = request.META.get("CONTENT_LENGTH") or "0"
            if (declared.isdigit() and int(declared) > self.max_body_bytes) or len(request.body) > self.max_body_bytes:
                raise MessageTooLarge(
                    f"A {self.message_name} is at most {self.max_body_bytes} bytes.", limit=self.max_body_bytes
                )
        super().initial(request, *args, **kwargs)


class EnrolView(AgentView):
    class InputSerializer(Input):
        public_key = serializers.CharField(max_length=64, min_length=64, help_text="Raw Ed25519 public key, hex")

    @extend_schema(
        request=InputSerializer,
        responses=inline_serializer(
            "AgentEnrolment",
            {
                "organisation": serializers.CharField(),
                "public_key": serializers.CharField(),
                "terms": serializers.ListField(child=serializers.DictField()),
                "coordinator_key": serializers.CharField(help_text="The ledger's Ed25519 public key (hex) that signs round tickets."),
            },
        ),
    )
    def post(self, request):
        from accounting import heads

        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        identity = agent_enrol(user=request.user, public_key_hex=data.validated_data["public_key"])
        return Response(
            {
                "organisation": identity.organisation.slug,
                "public_key": identity.public_key,
                "terms": agent_terms(identity.organisation),
                "coordinator_key": heads.public_key_hex(),
            }
        )


class TasksView(AgentView):
    """Long poll: answers at once when there is work, otherwise waits up to `wait` seconds,
    woken as soon as a round opens a phase (federation/wakeup.py)."""

    @extend_schema(
        parameters=[OpenApiParameter("wait", int, description=f"seconds to wait for work (0-{MAX_WAIT_SECONDS})")],
        responses=inline_serializer(
            "AgentTasks",
            {
                "tasks": serializers.ListField(child=serializers.DictField()),
                "terms": serializers.ListField(
                    child=serializers.DictField(), help_text="The terms of every active agreement the organisation is party to (the fields of the enrolment answer's terms)."
                ),
                "rounds": serializers.ListField(
                    child=serializers.IntegerField(),
                    help_text="Ids of the live rounds that may still ask something of the organisation; a round not listed asks nothing more.",
                ),
            },
        ),
    )
    def get(self, request):
        try:
            wait = min(MAX_WAIT_SECONDS, max(0.0, float(request.query_params.get("wait", 0))))
        except ValueError:
            raise ValidationFailed("wait must be a number of seconds.", fields={"wait": ["Enter a number."]}) from None
        # Recorded once per poll (the agent is alive, runs this version) and answered with the
        # terms it must hold: an agreement signed after it enrolled is known from this poll on.
        terms = agent_poll(user=request.user, user_agent=request.META.get("HTTP_USER_AGENT", ""))
        deadline = time.monotonic() + wait
        while True:
            # The generation is read before the tasks: work announced in between wakes the
            # wait below at once instead of being missed (federation/wakeup.py).
            seen = wakeup.waiters.generation() if wait else 0
            tasks = agent_tasks(user=request.user)
            remaining = deadline - time.monotonic()
            if tasks or remaining <= 0:
                # Read after the tasks: a round listed in neither has ended for this agent.
                rounds = agent_rounds_taking_part(user=request.user)
                return Response({"tasks": tasks, "terms": terms, "rounds": rounds})
            close_old_connections()
            wakeup.waiters.wait(seen, timeout=min(remaining, wakeup.FALLBACK_SECONDS))


def _body_limit(round_id: int, phase: str) -> int:
    if phase == EVALUATE:
        return EVALUATION_MAX_BYTES
    cfg = round_protocol_config(round_id=round_id)
    if not cfg:
        return 4096
    config = secagg.RoundConfig(
        round_id=f"round-{round_id}", roster=tuple(cfg["roster"]), threshold=cfg["threshold"], vector_length=cfg["vector_length"]
    )
    return secagg.max_body_bytes(config, phase)


class SubmitView(AgentView):
    parser_classes = [RawBodyParser]

    @extend_schema(
        request={"application/octet-stream": bytes, "application/json": dict},
        responses={200: inline_serializer("AgentAccepted", {"accepted": serializers.BooleanField()})},
        description="One protocol message for the round's current phase: the raw body a partner's "
        "SecAggClient produced (binary for masked_input), or the noisy evaluation release as JSON.",
    )
    def post(self, request, round_id: int, phase: str):
        if phase not in AGENT_PHASES:
            raise UnknownPhase(MSG_UNKNOWN_PHASE.format(phase=phase, phases=", ".join(AGENT_PHASES)), phase=phase)
        round_id = valid_pk(round_id)
        if round_id is None:
            raise NotFound("Round not found.")
        limit = _body_limit(round_id, phase)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > limit:
            return Response(
                {"code": "message_too_large", "message": f"A {phase} message is at most {limit} bytes; got {length}.", "details": {"limit": limit}},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        if phase == secagg.MASKED_INPUT:
            with spooled_body(request, limit) as body:
                if body is None:
                    return self._too_large(phase, limit)
                return Response(agent_submit(user=request.user, round_id=round_id, phase=phase, body=body))
        body = request.body
        if len(body) > limit:
            return self._too_large(phase, limit)
        if request.content_type.split(";")[0].strip().lower() == "application/json":
            parse_json(body)  # a JSON message must be JSON (strict: no NaN); the protocol checks the rest
        result = agent_submit(user=request.user, round_id=round_id, phase=phase, body=body)
        return Response(result)

    @staticmethod
    def _too_large(phase: str, limit: int) -> Response:
        return Response(
            {"code": "message_too_large", "message": f"A {phase} message is at most {limit} bytes.", "details": {"limit": limit}},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )


SPOOL_CHUNK_BYTES = 1 << 16


@contextmanager
def spooled_body(request, limit: int):
    """The request body, read in 64 kB chunks into an unlinked temporary file and handed over
    as a read-only memoryview of its mapping (None when it exceeds `limit`).

    A masked input weighs 4 bytes a parameter, and all n partners post theirs at once while
    the round lock lets one in at a time: read into memory, the web process held n of them
    (O(n d)); spooled, a waiting request holds one chunk, and the one being added into the
    running sum is paged in from the file (ARCHITECTURE.md's O(model size) coordinator)."""
    with tempfile.TemporaryFile(prefix="masked-input-", dir=settings.VAR_DIR) as spool:
        size = 0
        while True:
            chunk = request.read(SPOOL_CHUNK_BYTES)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                yield None
                return
            spool.write(chunk)
        if size == 0:
            yield b""
            return
        spool.flush()
        mapped = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield memoryview(mapped)
        finally:
            try:
                mapped.close()
            except BufferError:  # a view is still referenced (a refused message's traceback): unmapped when collected
                pass


class ModelView(AgentView):
    """The raw parameters of a model a round hands out (the task names it with its SHA-256,
    which the agent checks): 4 bytes a parameter instead of base64 inside the task's JSON."""

    @extend_schema(
        responses={(200, "application/octet-stream"): bytes},
        description="The model's parameters as little-endian float32 words: the round's start model, or the model it "
        "produced (for the evaluation), to an agent of an organisation active in the round.",
    )
    def get(self, request, round_id: int, version: int):
        round_id = valid_pk(round_id)
        if round_id is None:
            raise NotFound("Round not found.")
        body = agent_model(user=request.user, round_id=round_id, version=version)
        return HttpResponse(body, content_type="application/octet-stream")


# Receipts and refusals are small (an event's JSON, two hashes, a key; a code and a sentence).
RECEIPT_MAX_BYTES = 4096
REFUSAL_MAX_BYTES = 4096


class RefuseView(AgentView):
    """The agent declines the round, with a stable code and a reason people can read."""

    max_body_bytes = REFUSAL_MAX_BYTES
    message_name = "refusal"

    class RefusalSerializer(serializers.Serializer):
        code = serializers.CharField(max_length=REFUSAL_CODE_MAX, help_text="Stable refusal code, e.g. ticket_signature.")
        reason = serializers.CharField(max_length=REFUSAL_REASON_MAX)

    @extend_schema(
        request=RefusalSerializer,
        responses=inline_serializer("AgentRefusal", {"accepted": serializers.BooleanField(), "code": serializers.CharField()}),
    )
    def post(self, request, round_id: int):
        data = self.RefusalSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(agent_refuse(user=request.user, round_id=round_id, **data.validated_data))


class ReceiptView(AgentView):
    """The agent's signed receipt for a round whose masked input it sent (federation/agent/trust.py)."""

    max_body_bytes = RECEIPT_MAX_BYTES
    message_name = "receipt"

    @extend_schema(request={"application/json": dict}, responses=inline_serializer("AgentReceiptAccepted", {"accepted": serializers.BooleanField()}))
    def post(self, request, round_id: int):
        # Parsed strictly by the view's parser first (malformed_json, non_finite_number);
        # the signature is then checked over the very bytes the agent sent.
        return Response(agent_receipt(user=request.user, round_id=round_id, body=request.body))
