"""The shape every result object shares (one vocabulary for results).

* ``value``: the headline number (each class's docstring says which direction is better);
* ``per_sample``: one value per input (a tensor) where such values exist, else None;
* ``to_dict()``: a JSON-ready dict holding ``value`` and the other fields, with tensors as
  nested lists, NaN as None and +-inf as "inf" / "-inf" (``json.dumps(..., allow_nan=False)``
  accepts it).

Old attribute names stay for one release as deprecated properties
(:func:`deprecated_attribute`), as old keyword names do (:func:`robustx.checks.renamed`).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch

__all__ = ["Result", "deprecated_attribute", "jsonable"]


class Result:
    """Mixin for result dataclasses: ``to_dict()`` from ``value`` and the fields. A class
    without per-input values sets ``per_sample = None`` (a class attribute, not a field)."""

    def to_dict(self) -> dict:
        """JSON-ready dict: ``value`` then every field (tensors as lists, NaN as None, inf as "inf")."""
        out = {"value": jsonable(self.value)}
        for f in dataclasses.fields(self):
            out[f.name] = jsonable(getattr(self, f.name))
        return out


def deprecated_attribute(old: str, new: str) -> property:
    """A read-only property ``old`` that warns ``DeprecationWarning`` and returns ``new``
    (kept for one release after a rename)."""
    def get(self) -> Any:
        warnings.warn(f"{type(self).__name__}.{old} is deprecated, use .{new}; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        return getattr(self, new)
    return property(get, doc=f"Deprecated alias of ``{new}`` (one release).")


def jsonable(value) -> Any:
    """``value`` as JSON-ready data: tensors and tuples as lists, mappings with string keys,
    NaN as None, +-inf as "inf" / "-inf"; other leaves unchanged."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
