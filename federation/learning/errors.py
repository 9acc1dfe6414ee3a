"""Errors raised by the learning core.

Why a module of its own: the partner agent and the coordinator both need to tell a
caller's mistake (bad DP parameters, a malformed CSV, a model spec that does not fit the
data) from a bug. Every error here is a ``ValueError`` subclass that carries the facts as
attributes, so the agent can report them to the coordinator and the API can turn them into
a 4xx with a stable code, without parsing messages.
"""

from __future__ import annotations


class LearningError(ValueError):
    """Base class of every error the learning core raises on bad input."""

    code = "learning_error"


class DPParameterError(LearningError):
    """A DP-SGD or release parameter that would make the privacy accounting wrong.

    Raised before any data is touched, so nothing is spent.
    """

    code = "dp_parameter_invalid"
    MESSAGE = "invalid DP parameter {name}={value!r}: must be {requirement}"

    def __init__(self, name: str, value: object, requirement: str) -> None:
        self.name = name
        self.value = value
        self.requirement = requirement
        super().__init__(self.MESSAGE.format(name=name, value=value, requirement=requirement))


class ModelSpecError(LearningError):
    """A model spec that cannot be built, or parameters/data that do not fit it."""

    code = "model_spec_invalid"


class DataError(LearningError):
    """A partner's CSV does not match the dataset's declared schema.

    ``row`` is the 1-based row of the CSV file counting the header as row 1 (so it is the
    line number an editor shows for files without quoted newlines); ``column`` is the
    column name. Either may be ``None`` when the problem is not tied to one cell (an empty
    file, for instance).
    """

    code = "data_invalid"

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None) -> None:
        self.row = row
        self.column = column
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.reason = message
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class QuantisationError(LearningError):
    """Fixed-point parameters that could overflow the secure-aggregation modulus."""

    code = "quantisation_invalid"
