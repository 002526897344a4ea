"""robustx: fast, paper-faithful robustness evaluation of PyTorch image classifiers.

Submodules (imported on first use): ``ops`` (compiled operators), ``sampling``,
``weibull``, ``clever``, ``attacks``, ``models``, ``coverage``, ``sensitivity``,
``defenses``, ``landscape``, ``divergence``, ``compat.art``, ``cli``.
"""
import importlib

from robustx import ops
from robustx.clever import clever

__version__ = "0.1.0"
__all__ = ["ops", "clever", "__version__"]

_SUBMODULES = {
    "sampling", "weibull", "attacks", "models", "coverage", "sensitivity", "defenses",
    "landscape", "divergence", "compat", "cli", "data",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"robustx.{name}")
    raise AttributeError(f"module 'robustx' has no attribute {name!r}")
