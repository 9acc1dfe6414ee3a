"""JSON as the standard defines it: no NaN, no Infinity.

Python's `json` accepts the tokens `NaN`, `Infinity` and `-Infinity`, and turns a number too
large for a float (`1e999`) into infinity. Neither is a number the database stores (a JSON
column refuses them, a float column stores nonsense), nor one any fedgov field means; they are
refused where input is read, naming where in the document they were.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteNumber(ValueError):
    """The document holds NaN or an infinity; `path` says where ("" for the top level,
    "a.b[2]" inside)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path or 'the document'}: not a finite number (NaN and Infinity are not JSON).")
        self.path = path


class _NonFinite:
    """Stands in for a non-finite number while parsing, so that its place can be named."""


_NON_FINITE = _NonFinite()


def _parse_constant(token: str) -> _NonFinite:
    return _NON_FINITE


def _parse_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NON_FINITE


def loads(data: str | bytes, **kwargs) -> Any:
    """`json.loads(data)`, raising `NonFiniteNumber` for NaN, Infinity or a float that
    overflows, and `ValueError` (json.JSONDecodeError) for text that is not JSON."""
    value = json.loads(data, parse_constant=_parse_constant, parse_float=_parse_float, **kwargs)
    path = non_finite_path(value)
    if path is not None:
        raise NonFiniteNumber(path)
    return value


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Where `value` (parsed JSON, or any nest of dicts and lists) holds a non-finite number."""
    if value is _NON_FINITE or (isinstance(value, float) and not math.isfinite(value)):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
