"""YAML values -> typed frozen dataclasses: the generic part of the configuration parser.

``build_dataclass(cls, raw, origin, prefix)`` checks every key of ``raw`` against ``cls``'s
fields (unknown keys name the closest valid key, or, for an OpenNMT-tf key seqtrain does not
support, what to use instead), converts each value to its annotation (Optional, Literal, tuple,
nested dataclass, bool/int/float/str) and checks the numeric bounds of the field's metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from seqtrain import opennmt_keys
from seqtrain.errors import SeqtrainError


def build_dataclass(cls, raw: Any, origin: str, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "top level"
        raise SeqtrainError(f"{origin}: '{where}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            reason = opennmt_keys.rejection(name)
            if reason:
                raise SeqtrainError(f"{origin}: {reason}")
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
            valid = ", ".join(fields)
            raise SeqtrainError(f"{origin}: unknown key '{name}'.{hint} Valid keys here: {valid}")
        values[key] = convert(hints[key], value, fields[key], origin, name)
    return cls(**values)


def convert(hint, value, fld, origin: str, name: str, nullable: bool = False):
    """Convert one YAML value to the annotated type, or raise a SeqtrainError naming the key."""
    origin_type = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin_type in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # Union[str, a dataclass]: a mapping is the dataclass
            inner = [a for a in inner if dataclasses.is_dataclass(a) == isinstance(value, dict)]
        return convert(inner[0], value, fld, origin, name, nullable=True)
    if dataclasses.is_dataclass(hint):
        value = getattr(hint, "normalize_yaml", lambda v: v)(value)  # a class's legacy forms
        return build_dataclass(hint, value, origin, f"{name}.")
    if origin_type is Literal:
        if value not in args:
            reason = opennmt_keys.value_rejection(name, value)
            if reason:
                raise SeqtrainError(f"{origin}: {reason}")
            allowed = ", ".join([str(a) for a in args] + (["null"] if nullable else []))
            raise SeqtrainError(f"{origin}: {name} = {value!r} is not valid; allowed: {allowed}")
        return value
    if hint is dict or origin_type is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise SeqtrainError(f"{origin}: {name} must be a mapping of names to values")
        return dict(value)
    if origin_type is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SeqtrainError(f"{origin}: {name} must be a list, got {value!r}")
        return tuple(convert(args[0], v, fld, origin, name) for v in value)
    return check_scalar(hint, value, fld, origin, name)


def check_scalar(hint, value, fld, origin: str, name: str):
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise SeqtrainError(f"{origin}: {name} must be {expected[hint]}, got {value!r}")
    if hint is float:
        value = float(value)
    meta = fld.metadata if fld is not None else {}
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        reason = opennmt_keys.value_rejection(name, value)
        if reason:
            raise SeqtrainError(f"{origin}: {reason}")
        raise SeqtrainError(f"{origin}: {name} = {value!r} is too small; it must be >= {low}")
    if high is not None and value > high:
        raise SeqtrainError(f"{origin}: {name} = {value!r} is too large; it must be <= {high}")
    return value
