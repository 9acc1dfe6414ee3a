"""Property-based API testing with Schemathesis against the OpenAPI schema at /api/schema/.

Every operation is called with generated requests (valid and invalid), authenticated as an
administrator, through the WSGI application: no answer may be a server error, and every
answer must match what the schema says (status code, content type, body). Bounded: a few
examples per operation and a time limit per operation.

Path ids are pointed at real objects (the cast's agreement, dataset, round...) so the
generated bodies reach the services instead of stopping at a 404.
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import World

EXAMPLES_PER_OPERATION = 5
SECONDS_PER_OPERATION = 120
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def load_schema():
    """The schema as /api/schema/ serves it, through the WSGI application. Loaded when the
    module is collected (schemathesis' lazy fixture loader does not run on pytest 9), which
    needs no database: the schema view reads none."""
    return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


schema = load_schema()


@pytest.fixture(autouse=True)
def _keep_the_test_connection_open():
    # A bare WSGI call closes the database connection when the request ends (Django's test
    # client avoids this the same way): keep the test's transaction open across calls.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# Which object a path id names, by the operation's path.
PATH_OBJECTS = [
    (r"^/api/v1/tokens/\{id\}/", lambda w: w.spare_token),
    (r"^/api/v1/organisations/\{id\}/", lambda w: w.cast.org_a),
    (r"^/api/v1/memberships/\{id\}/", lambda w: w.membership),
    (r"^/api/v1/agreements/\{id\}/sign/", lambda w: w.pending_agreement),
    (r"^/api/v1/agreements/\{id\}/submit/", lambda w: w.draft_agreement),
    (r"^/api/v1/agreements/\{id\}/", lambda w: w.cast.agreement),
    (r"^/api/v1/datasets/\{id\}/", lambda w: w.cast.dataset_a),
    (r"^/api/v1/plans/\{id\}/rounds/", lambda w: w.idle_plan),
    (r"^/api/v1/plans/\{id\}/", lambda w: w.cast.plan),
    (r"^/api/v1/rounds/\{id\}/", lambda w: w.round),
    (r"^/api/v1/model-versions/\{id\}/", lambda w: w.model_version),
]


def point_at_real_objects(case, world: World) -> None:
    if not case.path_parameters or "id" not in case.path_parameters:
        return
    value = case.path_parameters["id"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return  # an invalid id stays invalid: the negative checks want it refused
    for pattern, pick in PATH_OBJECTS:
        if re.match(pattern, case.path):
            case.path_parameters["id"] = pick(world).pk
            return


@schema.exclude(path_regex=r"^/api/v1/agent/").parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
@pytest.mark.timeout(SECONDS_PER_OPERATION)
def test_api_answers_match_the_schema(case, world: World):
    point_at_real_objects(case, world)
    case.call_and_validate(headers={"Authorization": f"Token {world.keys['admin']}"}, checks=CHECKS)
