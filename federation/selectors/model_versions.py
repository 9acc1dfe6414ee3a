"""Global model versions: metadata for everyone who sees the plan."""

from __future__ import annotations

from django.db.models import QuerySet
from django.db.models.functions import Length

from .. import access
from ..models import ModelVersion


def model_versions_for(*, user) -> QuerySet[ModelVersion]:
    # The parameters can be megabytes: never loaded by a list or a detail, only by a download.
    return access.visible_model_versions(user).defer("params").annotate(size_bytes=Length("params"))


def downloadable_model_versions(*, user) -> QuerySet[ModelVersion]:
    """The model versions `user` sees, parameters included, with the plan's agreement (whose
    parties alone may download them: `access.require_party_member`)."""
    return access.visible_model_versions(user).select_related("plan__agreement")
