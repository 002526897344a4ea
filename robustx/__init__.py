"""robustx: fast, paper-faithful robustness evaluation of PyTorch image classifiers.

Submodules (imported on first use): ``ops`` (the compiled operators, one module each with its
reference, and the loader that picks $ROBUSTX_OPS_LIBRARY, robustx._C or the references),
``weibull``, ``clever``, ``attacks``, ``models``, ``data``, ``coverage``, ``sensitivity``,
``defenses``, ``landscape``, ``divergence``, ``compat.art``, ``demo``, ``cli``.
"""
import importlib

from robustx import ops
from robustx.clever import clever

__version__ = "0.1.0"
__all__ = ["ops", "clever", "__version__"]

_SUBMODULES = {
    "weibull", "attacks", "models", "data", "coverage", "sensitivity", "defenses",
    "landscape", "divergence", "compat", "demo", "cli", "modelutil",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"robustx.{name}")
    raise AttributeError(f"module 'robustx' has no attribute {name!r}")
