"""Lp geometry shared by every method: norm names, dual exponents and (added as the
methods move here) steepest-ascent steps, projections and the logit margin.

Norms are the exponents p in {1, 2, inf}; the dual exponent q satisfies 1/p + 1/q = 1.
"""
from __future__ import annotations

import math

__all__ = ["parse_norm", "dual_norm", "norm_name"]

_NORM_NAMES = {"1": 1.0, "2": 2.0, "inf": math.inf, "linf": math.inf, "l1": 1.0, "l2": 2.0}


def parse_norm(norm, name: str = "norm") -> float:
    """Normalise a norm given as 1, 2, inf, np.inf or "1"/"2"/"inf"/"l2"... to 1.0, 2.0 or inf."""
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in _NORM_NAMES:
            return _NORM_NAMES[key]
    elif isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm in (1, 2) or math.isinf(norm) and norm > 0:
            return float(norm)
    raise ValueError(f"{name} must be one of 1, 2, inf (or '1', '2', 'inf'), got {norm!r}")


def dual_norm(p: float) -> float:
    """The dual exponent q of p, 1/p + 1/q = 1: 1 -> inf, 2 -> 2, inf -> 1."""
    p = parse_norm(p, "p")
    return {1.0: math.inf, 2.0: 2.0}.get(p, 1.0)


def norm_name(p: float) -> str:
    """The short name of a norm exponent: "1", "2" or "inf"."""
    p = parse_norm(p, "p")
    return "inf" if math.isinf(p) else str(int(p))
