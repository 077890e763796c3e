"""Type checks for the typed configs (``TransformerConfig``, ``TrainConfig``, policy and lifecycle
settings): a value read from ``--config`` or JSON that has the wrong type gets a ``DataError`` naming
the field, instead of a ``TypeError`` deep inside torch or a comparison."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np

from valuerec.data.schema import DataError


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"a {type(value).__name__}"


def check_value(name: str, annotation, value, what: str):
    """``value`` checked against the type ``annotation`` (a type or its string form); returns it
    normalised, or raises a DataError naming ``name``.

    ``int`` takes integers (a whole float such as 50.0 becomes 50); ``float`` takes finite numbers;
    ``bool`` takes booleans; ``str`` takes strings; ``X | None`` also takes None and ``float | str`` a
    number or a string. Other annotations are not checked."""
    parts = set(str(getattr(annotation, "__name__", annotation)).replace(" ", "").split("|"))
    v = value
    if isinstance(v, np.generic):      # numpy scalars (a grid from np.arange) as the Python ones
        v = v.item()
    if v is None and "None" in parts:
        return v
    if isinstance(v, str) and "str" in parts:
        return v
    if "bool" in parts:
        if not isinstance(v, bool):
            raise DataError(f"{what}: {name}={v!r}, expected true or false (got {_kind(v)})")
        return v
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if "int" in parts:
        if number and math.isfinite(float(v)) and float(v).is_integer():
            return int(v)
        raise DataError(f"{what}: {name}={v!r}, expected a whole number (got {_kind(v)})")
    if "float" in parts:
        if number and math.isfinite(float(v)):
            return float(v)
        raise DataError(f"{what}: {name}={v!r}, expected a finite number (got {_kind(v)})")
    if parts == {"str"}:
        raise DataError(f"{what}: {name}={v!r}, expected a string (got {_kind(v)})")
    return v


def check_values(cls, values: dict, what: str) -> dict:
    """``values`` (field name -> value, for fields of the dataclass ``cls``) checked and normalised
    against the fields' annotations (``check_value``); returns the normalised copy."""
    out = dict(values)
    for f in fields(cls):
        if f.name in out:
            out[f.name] = check_value(f.name, f.type, out[f.name], what)
    return out


def check_types(obj, what: str) -> None:
    """``check_values`` on the fields of the dataclass instance ``obj``, normalising them in place."""
    vals = check_values(type(obj), {f.name: getattr(obj, f.name) for f in fields(obj)}, what)
    for k, v in vals.items():
        if getattr(obj, k) is not v:
            object.__setattr__(obj, k, v)


def require(what: str, checks: dict[str, tuple[object, bool, str]]) -> None:
    """``checks``: field name -> (value, holds, what it must be); the first that fails is a DataError."""
    for name, (value, holds, must) in checks.items():
        if not holds:
            raise DataError(f"{what}: {name}={value!r}, must be {must}")
