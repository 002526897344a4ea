"""JSON with NaN and infinities: the one convention of every file robustx writes.

Strict JSON has no NaN or infinity. robustx writes a non-finite float as the string
``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (the spelling of Python's and JavaScript's
own tokens) and reads those three strings back as floats: ``report.json``, ``clever.json``,
the results store's metadata and the canonical JSON behind its content keys all use
:func:`encode` / :func:`decode`. Tensors are written as nested lists and tuples as lists.
Reading also accepts the bare ``NaN`` / ``Infinity`` tokens older files may hold.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping

import torch

__all__ = ["encode", "decode", "dumps", "loads", "NONFINITE"]

#: The strings that stand for the non-finite floats.
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode(value):
    """``value`` as strict JSON data: non-finite floats as their :data:`NONFINITE` string,
    tensors as (nested) lists, tuples as lists, mapping keys as strings, a result object
    (a dataclass with ``to_dict``) as its ``to_dict()``; everything else unchanged."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "to_dict"):
        return encode(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    """The inverse of :func:`encode` on parsed JSON: the :data:`NONFINITE` strings become floats."""
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps`` of :func:`encode` (``value``), strict (``allow_nan=False``); ``kwargs``
    as in ``json.dumps`` (indent, sort_keys, separators)."""
    return json.dumps(encode(value), allow_nan=False, **kwargs)


def loads(text: str):
    """``json.loads`` of ``text`` then :func:`decode`: the data :func:`dumps` was given."""
    return decode(json.loads(text))
