"""robustx: fast, paper-faithful robustness evaluation of PyTorch image classifiers.

``robustx.evaluate(model, data, ...)`` runs the whole evaluation suite and returns a report
(:mod:`robustx.pipeline`); ``robustx.clever`` scores CLEVER directly.

Submodules (imported on first use): ``ops`` (the compiled operators, one module each with its
reference, and the loader that picks $ROBUSTX_OPS_LIBRARY, robustx._C or the references),
``geometry`` and ``checks`` (the shared Lp geometry and argument checks), ``neurons`` (what a
neuron of a layer is), ``weibull``, ``clever``, ``attacks``, ``models``, ``data``,
``coverage``, ``sensitivity``, ``defenses``, ``landscape``, ``divergence``, ``metrics`` (the
suite's metric functions and registry), ``pipeline`` (evaluate, results store, report),
``compat.art``, ``plotting`` (every figure), ``commands`` (the command line).
"""
import importlib

from robustx import ops
from robustx.clever import clever

__version__ = "0.1.0"
__all__ = ["ops", "clever", "evaluate", "__version__"]

_SUBMODULES = {
    "geometry", "checks", "neurons", "weibull", "attacks", "models", "data", "coverage", "sensitivity",
    "defenses", "landscape", "divergence", "metrics", "pipeline", "compat", "plotting", "commands", "modelutil",
}


def __getattr__(name):
    if name == "evaluate":
        from robustx.pipeline.evaluate import evaluate

        return evaluate
    if name in _SUBMODULES:
        return importlib.import_module(f"robustx.{name}")
    raise AttributeError(f"module 'robustx' has no attribute {name!r}")
