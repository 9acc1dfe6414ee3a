"""API tokens: list, create and revoke your own (administrators: anyone's), and obtain one
with a username and password. A token's key is shown once, when it is created."""

from __future__ import annotations

from django.contrib.auth import authenticate, get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny

from fedgov.errors import PermissionDenied, ValidationFailed

from ..access import is_administrator
from ..models import ApiToken
from ..services.tokens import token_issue, token_revoke
from .auth import LoginThrottle, token_scopes
from .base import ApiView, Input
from .filters import TokenFilter
from .schema import ErrorSerializer

User = get_user_model()

MSG_SCOPE_ESCALATION = "A token can only create tokens with scopes it carries itself ({scopes})."
MSG_UNKNOWN_USER = "No user named {username!r}."
MSG_BAD_CREDENTIALS = "Invalid username or password."


class TokenOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.Scope.choices))
    is_valid = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = ["id", "user", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at", "is_valid"]
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


def tokens_for(user):
    tokens = ApiToken.objects.select_related("user")
    if is_administrator(user):
        return tokens
    if not user or not user.is_authenticated:
        return tokens.none()
    return tokens.filter(user=user)


def issue(*, actor, user, data: dict) -> ApiToken:
    token, key = token_issue(actor=actor, user=user, **data)
    token.key = key  # kept on the instance for the one answer that shows it
    return token


class TokenListView(ApiView):
    """GET: your tokens (administrators: everyone's, filter by `user`). POST: a new token for
    you (administrators: for `user`). Through a token, only scopes that token has itself."""

    required_scope = {"GET": "read", "POST": "read"}
    filterset_class = TokenFilter
    ordering_fields = ["created_at", "expires_at", "last_used_at"]

    class InputSerializer(TokenInput):
        user = serializers.CharField(max_length=150, required=False, help_text="Username (administrators only); you by default.")

        class Meta:
            ref_name = "ApiTokenCreateInput"

    def get_queryset(self):
        return tokens_for(self.request.user)

    @extend_schema(operation_id="tokens_list", responses=TokenOutput(many=True))
    def get(self, request):
        return self.list_response(self.get_queryset(), TokenOutput)

    @extend_schema(operation_id="tokens_create", request=InputSerializer, responses={201: NewTokenOutput})
    def post(self, request):
        data = dict(self.validated_input(self.InputSerializer))
        user = self.token_owner(data.pop("user", None))
        own = token_scopes(request)
        if own is not None and not set(data["scopes"]) <= own:
            raise PermissionDenied(MSG_SCOPE_ESCALATION.format(scopes=", ".join(sorted(own))))
        token = issue(actor=request.user, user=user, data=data)
        return self.output(NewTokenOutput, token, status_code=status.HTTP_201_CREATED)

    def token_owner(self, username: str | None):
        me = self.request.user
        if not username or username == me.username:
            return me
        if not is_administrator(me):
            # Before looking the name up: nobody but an administrator learns which users exist.
            raise PermissionDenied("Only an administrator can create tokens for someone else.")
        user = User.objects.filter(username=username).first()
        if user is None:
            message = MSG_UNKNOWN_USER.format(username=username)
            raise ValidationFailed(message, fields={"user": [message]})
        return user


class TokenRevokeView(ApiView):
    """Revoke a token at once (yours; administrators: anyone's). Revoked tokens stay listed."""

    object_name = "Token"
    required_scope = "read"

    def object_queryset(self):
        return tokens_for(self.request.user)

    @extend_schema(operation_id="tokens_revoke", request=None, responses=TokenOutput)
    def post(self, request, pk: int):
        return self.output(TokenOutput, token_revoke(actor=request.user, token=self.get_object()))


class ObtainTokenView(ApiView):
    """Exchange a username and password for a new token (throttled: the `login` rate per
    address). Nothing else in the API accepts a password."""

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
        user = authenticate(request, username=data.pop("username"), password=data.pop("password"))
        if user is None:
            raise exceptions.AuthenticationFailed(MSG_BAD_CREDENTIALS)
        token = issue(actor=user, user=user, data=data)
        return self.output(NewTokenOutput, token, status_code=status.HTTP_201_CREATED)
