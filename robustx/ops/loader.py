"""Which implementation the operator wrappers call.

In order: the shared library named by ``$ROBUSTX_OPS_LIBRARY`` (e.g. the
``librobustx_ops.so`` of a ``make cmake`` build, loaded with ``torch.ops.load_library``),
else the compiled extension ``robustx._C``, else - with one ``RuntimeWarning`` - the
pure-PyTorch references ``*_ref``, which define the semantics and are much slower.
``ROBUSTX_REFERENCE_OPS=1`` selects the references without trying a library.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, List, Optional

import torch

__all__ = ["LIBRARY_ENV", "REFERENCE_ENV", "compiled", "source", "reference_ops"]

LIBRARY_ENV = "ROBUSTX_OPS_LIBRARY"
REFERENCE_ENV = "ROBUSTX_REFERENCE_OPS"


def _load() -> Optional[str]:
    """Load the operator library; return where it came from, or None for the references."""
    if os.environ.get(REFERENCE_ENV, "") not in ("", "0"):
        return None
    failures: List[str] = []
    path = os.environ.get(LIBRARY_ENV)
    if path:
        try:
            torch.ops.load_library(path)
            return path
        except (OSError, RuntimeError) as err:
            failures.append(f"{LIBRARY_ENV}={path}: {err}")
    try:
        from robustx import _C  # noqa: F401  (registers torch.ops.robustx.*)

        return "robustx._C"
    except (ImportError, OSError) as err:
        failures.append(f"robustx._C: {err}")
    warnings.warn(
        f"no robustx operator library could be loaded ({'; '.join(failures)}); falling back to the "
        "pure-PyTorch reference operators, which are much slower. Build the extension with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


SOURCE = _load()
_active = SOURCE is not None


def compiled() -> bool:
    """True when the wrappers call the compiled operators (not the pure-PyTorch references)."""
    return _active


def source() -> Optional[str]:
    """Where the compiled operators were loaded from (a library path or "robustx._C"), or None."""
    return SOURCE


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Route every wrapper to its pure-PyTorch reference inside the block (for comparisons)."""
    global _active
    saved, _active = _active, False
    try:
        yield
    finally:
        _active = saved
