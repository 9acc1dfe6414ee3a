"""API tokens: list, create and revoke your own (administrators: anyone's), and obtain one
with a username and password. A token's key is shown once, when it is created."""

from __future__ import annotations

from django.contrib.auth import authenticate, get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny

from fedgov.errors import PermissionDenied, ValidationFailed
from fedgov.throttles import locked_out_message, password_failed, password_wait

from ..access import is_administrator
from ..models import ApiToken
from ..selectors.tokens import tokens_for, user_named
from ..services.tokens import MSG_MINT_OTHER_USER, TokenMintingRefused, token_issue, token_revoke
from ..twofactor import MSG_SECOND_FACTOR_REQUIRED, SecondFactorRequired, needs_second_factor
from .auth import LoginThrottle
from .base import ApiView, Input
from .filters import TokenFilter
from .schema import ErrorSerializer

User = get_user_model()

MSG_UNKNOWN_USER = "No user named {username!r}."
MSG_BAD_CREDENTIALS = "Invalid username or password."


class TokenOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.Scope.choices))
    is_valid = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = ["id", "user", "name", "prefix", "scopes", "parent", "created_at", "expires_at", "revoked_at", "last_used_at", "is_valid"]
        ref_name = "ApiToken"

    def get_is_valid(self, token: ApiToken) -> bool:
        return token.is_valid()


class NewTokenOutput(TokenOutput):
    key = serializers.SerializerMethodField(help_text="The token's key. Shown once: fedgov keeps only its hash.")

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "key"]
        ref_name = "NewApiToken"

    def get_key(self, token: ApiToken) -> str:
        return token.key


class TokenInput(Input):
    name = serializers.CharField(max_length=100, allow_blank=True, default="")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.Scope.choices), min_length=1, max_length=4)
    expires_in_days = serializers.IntegerField(
        min_value=1, max_value=3650, allow_null=True, default=90, help_text="Null: never expires."
    )

    class Meta:
        ref_name = "ApiTokenInput"


def issue(*, actor, user, data: dict, parent: ApiToken | None = None) -> ApiToken:
    token, key = token_issue(actor=actor, user=user, parent=parent, **data)
    token.key = key  # kept on the instance for the one answer that shows it
    return token


class TokenListView(ApiView):
    """GET: your tokens (administrators: everyone's, filter by `user`). POST: a new token for
    you (administrators, signed in: for `user`). Through a token, POST needs the `approve`
    scope and the new token is that token's child: its own user's, no scope the parent lacks,
    expiring no later than the parent, and revoked with it."""

    required_scope = {"GET": "read", "POST": "approve"}
    filterset_class = TokenFilter
    ordering_fields = ["created_at", "expires_at", "last_used_at"]

    class InputSerializer(TokenInput):
        user = serializers.CharField(max_length=150, required=False, help_text="Username (administrators only); you by default.")

        class Meta:
            ref_name = "ApiTokenCreateInput"

    def get_queryset(self):
        return tokens_for(user=self.request.user)

    @extend_schema(operation_id="tokens_list", responses=TokenOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), TokenOutput)

    @extend_schema(
        operation_id="tokens_create",
        request=InputSerializer,
        responses={
            201: NewTokenOutput,
            403: OpenApiResponse(
                ErrorSerializer,
                description="`permission_denied` (the token lacks `approve`), `token_scope_escalation` (a scope the"
                " token lacks) or `token_minting_refused` (for another user, or by a revoked or expired token).",
            ),
        },
    )
    def post(self, request):
        data = dict(self.validated_input(self.InputSerializer))
        user = self.token_owner(data.pop("user", None))
        parent = request.auth if isinstance(request.auth, ApiToken) else None
        token = issue(actor=request.user, user=user, data=data, parent=parent)
        return self.output(NewTokenOutput, token, status_code=status.HTTP_201_CREATED)

    def token_owner(self, username: str | None):
        me = self.request.user
        if not username or username == me.username:
            return me
        if isinstance(self.request.auth, ApiToken):
            raise TokenMintingRefused(MSG_MINT_OTHER_USER)
        if not is_administrator(me):
            # Before looking the name up: nobody but an administrator learns which users exist.
            raise PermissionDenied("Only an administrator can create tokens for someone else.")
        user = user_named(username=username)
        if user is None:
            message = MSG_UNKNOWN_USER.format(username=username)
            raise ValidationFailed(message, fields={"user": [message]})
        return user


class TokenRevokeView(ApiView):
    """Revoke a token at once (yours; administrators: anyone's). Revoked tokens stay listed."""

    object_name = "Token"
    required_scope = "read"

    def object_queryset(self):
        return tokens_for(user=self.request.user)

    @extend_schema(operation_id="tokens_revoke", request=None, responses=TokenOutput)
    def post(self, request, pk: int):
        token = self.get_object()
        # Your own tokens with any scope (a leaked token may always revoke itself); someone
        # else's only as an administrator with a session or a token carrying `approve`, so a
        # read-only administrator token cannot lock every machine out.
        if token.user_id != request.user.pk and isinstance(request.auth, ApiToken) and "approve" not in request.auth.scopes:
            raise PermissionDenied("Revoking someone else's token needs a session or a token with the approve scope.")
        return self.output(TokenOutput, token_revoke(actor=request.user, token=token))


class ObtainTokenView(ApiView):
    """Exchange a username and password for a new token (throttled: the `login` rate per
    client, and the wrong-password limit per client and per username, which the web and admin
    logins share). Nothing else in the API accepts a password."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginThrottle]
    throttle_scope = "login"

    class InputSerializer(TokenInput):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})

        class Meta:
            ref_name = "ObtainTokenInput"

    def get_authenticate_header(self, request):
        # Wrong credentials are a 401 (DRF answers 403 to a view without authenticators).
        return 'Token realm="api"'

    @extend_schema(
        operation_id="auth_token_obtain",
        request=InputSerializer,
        responses={
            201: NewTokenOutput,
            401: OpenApiResponse(ErrorSerializer, description="Invalid username or password (code `authentication_failed`)."),
        },
    )
    def post(self, request):
        data = dict(self.validated_input(self.InputSerializer))
        username = data.pop("username")
        wait = password_wait(request, username)
        if wait:
            raise exceptions.Throttled(wait=wait, detail=locked_out_message(wait))
        user = authenticate(request, username=username, password=data.pop("password"))
        if user is None:
            password_failed(request, username)
            raise exceptions.AuthenticationFailed(MSG_BAD_CREDENTIALS)
        if needs_second_factor(user):
            # A password alone must not become a token when the web login would ask for a code.
            raise SecondFactorRequired(MSG_SECOND_FACTOR_REQUIRED)
        token = issue(actor=user, user=user, data=data)
        return self.output(NewTokenOutput, token, status_code=status.HTTP_201_CREATED)
