"""One error body for every 4xx: {"code", "message", "details"}."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from fedgov.errors import ApplicationError, ValidationFailed

MSG_MALFORMED_JSON = "The body is not valid JSON: {error}"
MSG_NON_FINITE = "Not a finite number: NaN and Infinity are not accepted."


class MalformedJson(ApplicationError):
    """The request body could not be parsed as JSON; nothing was done."""

    code = "malformed_json"
    http_status = 400


class MessageTooLarge(ApplicationError):
    """An agent message over its size limit: refused before anything reads it."""

    code = "message_too_large"
    http_status = 413


class NonFiniteNumber(ValidationFailed):
    """The body holds NaN or an infinity; `details["fields"]` names where."""

    code = "non_finite_number"

    def __init__(self, path: str) -> None:
        field = path or "non_field_errors"
        super().__init__(f"{field}: {MSG_NON_FINITE}", fields={field: [MSG_NON_FINITE]})

DRF_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "validation_failed",
    exceptions.ParseError: "parse_error",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.NotAcceptable: "not_acceptable",
}


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return Response({"code": exc.code, "message": exc.message, "details": _jsonable(exc.details)}, status=exc.http_status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        message = "The request is invalid; see details."
        details = {"fields": response.data}
    else:
        message = str(exc.detail) if hasattr(exc, "detail") else str(exc)
        details = {}
    response.data = {"code": code, "message": message, "details": details}
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Token"
    return response


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --- Django's own error views, for URLs under /api/ -------------------------------------------
# A request that never reaches a DRF view (an id that is not a number, an unknown API path, a
# query string Django itself refuses) still answers with the API's one error body, in JSON.

API_PREFIX = "/api/"


def _json_error(status_code: int, code: str, message: str):
    from django.http import JsonResponse

    return JsonResponse({"code": code, "message": message, "details": {}}, status=status_code)


def bad_request(request, exception=None, template_name="400.html"):
    if request.path.startswith(API_PREFIX):
        return _json_error(400, "bad_request", "The request could not be read.")
    from django.views.defaults import bad_request as html

    return html(request, exception, template_name=template_name)


def permission_denied(request, exception=None, template_name="403.html"):
    if request.path.startswith(API_PREFIX):
        return _json_error(403, "permission_denied", "You do not have permission to do this.")
    from django.views.defaults import permission_denied as html

    return html(request, exception, template_name=template_name)


def page_not_found(request, exception=None, template_name="404.html"):
    if request.path.startswith(API_PREFIX):
        return _json_error(404, "not_found", "Not found.")
    from django.views.defaults import page_not_found as html

    return html(request, exception, template_name=template_name)


def server_error(request, template_name="500.html"):
    if request.path.startswith(API_PREFIX):
        return _json_error(500, "server_error", "The server failed to answer; the error is logged.")
    from django.views.defaults import server_error as html

    return html(request, template_name=template_name)
