"""OpenAPI: every operation documents the one error body it can answer with.

drf-spectacular documents the success response of a view from its serializers; the 4xx
bodies come from `federation.api.errors.exception_handler` and are the same everywhere, so
they are added here, by rule, instead of repeating `responses={...}` on every view:

* 401 and 429 on every operation that authenticates;
* 403 on every authenticated operation (a token's scope, a read-only role);
* 404 on every operation with a path parameter (an object you cannot see does not exist);
* 400 on every write and on every list (a malformed filter is refused, not ignored), and
  404 on every list (a page number that does not exist);
* 409 on every write (a state that does not allow the action, a failed governance check).

A view may still declare an error code itself with `extend_schema(responses={409: ...})`;
an explicit declaration wins.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers
from rest_framework.permissions import AllowAny

ERROR_DESCRIPTIONS = {
    "400": "Invalid input (code `validation_failed`, per-field messages in `details.fields`).",
    "401": "No or invalid credentials (code `not_authenticated` or `authentication_failed`).",
    "403": "Authenticated, but this role or token scope does not allow it (code `permission_denied`).",
    "404": "No such object, or you may not know that it exists; on a list, no such page (code `not_found`).",
    "409": "The object's state does not allow this (codes `invalid_state`, `governance_check_failed`, `budget_exceeded`).",
    "415": "The body is not JSON (code `unsupported_media_type`).",
    "429": "Too many requests (code `throttled`; `Retry-After` says when to retry).",
}


class ErrorSerializer(serializers.Serializer):
    """The body of every 4xx answer."""

    code = serializers.CharField(help_text="Stable, machine-readable error code, e.g. `not_found`, `budget_exceeded`.")
    message = serializers.CharField(help_text="A sentence a person can read.")
    details = serializers.DictField(
        help_text="The facts of the error: `fields` for validation errors; `requested`, `remaining` for "
        "`budget_exceeded`; `report` for `governance_check_failed`."
    )

    class Meta:
        ref_name = "Error"


class FedgovAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = ERROR_DESCRIPTIONS[code]
                responses[code] = response
        return responses

    def _error_codes(self) -> list[str]:
        codes = []
        authenticated = not any(isinstance(p, AllowAny) for p in self.view.get_permissions())
        if authenticated:
            codes += ["401", "403"]
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes += ["400", "409"]
            if self.method != "DELETE":
                codes += ["415"]
        elif self._is_list_view():
            codes += ["400", "404"]  # a malformed filter; a page number past the end
        if "{" in self.path:
            codes += ["404"]
        if authenticated or self.view.get_throttles():
            codes += ["429"]
        return sorted(set(codes))
