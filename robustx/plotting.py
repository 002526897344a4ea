"""Matplotlib settings shared by the figures robustx draws (report, landscape, sensitivity)."""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["literal_text"]


@contextlib.contextmanager
def literal_text() -> Iterator[None]:
    """Inside the block (or the decorated function), matplotlib draws every string as given:
    ``text.parse_math`` is off, so a ``$`` in a layer name, a folder name or a title is a
    dollar sign, never mathtext that fails to parse when the figure is saved."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield
