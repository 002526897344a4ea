"""The shape every result object shares (one vocabulary for results).

* ``value``: the headline number (each class's docstring says which direction is better);
* ``per_sample``: one value per input (a tensor) where such values exist, else None;
* ``to_dict()``: a strict-JSON dict holding ``value`` and the other fields, with tensors as
  nested lists and NaN / +-inf as :mod:`robustx.jsonio` writes them ("NaN", "Infinity",
  "-Infinity"; ``json.dumps(..., allow_nan=False)`` accepts it, ``jsonio.decode`` reads it back).

Old attribute names stay for one release as deprecated properties
(:func:`deprecated_attribute`), as old keyword names do (:func:`robustx.checks.renamed`).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from robustx import jsonio

__all__ = ["Result", "deprecated_attribute"]


class Result:
    """Mixin for result dataclasses: ``to_dict()`` from ``value`` and the fields. A class
    without per-input values sets ``per_sample = None`` (a class attribute, not a field)."""

    def to_dict(self) -> dict:
        """Strict-JSON dict: ``value`` then every field (:func:`robustx.jsonio.encode`)."""
        return jsonio.encode({"value": self.value, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}})


def deprecated_attribute(old: str, new: str) -> property:
    """A read-only property ``old`` that warns ``DeprecationWarning`` and returns ``new``
    (kept for one release after a rename)."""
    def get(self) -> Any:
        warnings.warn(f"{type(self).__name__}.{old} is deprecated, use .{new}; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        return getattr(self, new)
    return property(get, doc=f"Deprecated alias of ``{new}`` (one release).")
