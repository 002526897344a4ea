"""Content keys: sha256 digests of models, data and JSON settings, which name the units of
an evaluation's store (:mod:`robustx.pipeline.store`) and the runs they belong to.

JSON is canonical (sorted keys, only plain data, strict: non-finite floats as
:mod:`robustx.jsonio` writes them), so equal settings give equal digests whatever their order.
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Optional

import torch
from torch import nn

from robustx import checks, jsonio

__all__ = ["canonical_json", "model_digest", "data_digest", "json_digest"]


def _expect(value, kind: type, name: str, what: str) -> None:
    """TypeError naming ``name`` unless ``value`` is a ``kind`` (described as ``what``)."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")

def _check_json(value, where: str) -> None:
    """Raise TypeError naming ``where`` unless ``value`` is plain JSON data."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, numbers.Real):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r}; JSON keys must be strings")
            _check_json(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__} ({value!r}), which is not JSON data "
                    "(use None, bool, int, float, str, lists and dicts with str keys)")


def _plain(value):
    """``value`` with numbers as Python ints/floats and tuples as lists (JSON's view)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value]


def canonical_json(value, name: str = "settings") -> str:
    """``value`` as canonical JSON (sorted keys, no spaces); TypeError names a bad key.

    Tuples count as lists; non-finite floats are written as :mod:`robustx.jsonio` writes
    them (``"NaN"``, ``"Infinity"``; :func:`robustx.jsonio.loads` reads them back).
    """
    _check_json(value, name)
    return jsonio.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def _feed(h, *parts: bytes) -> None:
    """Length-prefixed parts into the hash, so no two field sequences collide."""
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a tensor (CPU, contiguous, any dtype)."""
    flat = t.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _feed_tensor(h, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        _feed(h, name.encode(), b"json", canonical_json(t, name).encode())
        return
    _feed(h, name.encode(), str(t.dtype).encode(), repr(tuple(t.shape)).encode(), _raw(t))


def model_digest(model: nn.Module) -> str:
    """sha256 hex digest of a model: its class, the ``repr`` of its module tree and every
    state_dict entry (name, dtype, shape, bytes, in order)."""
    checks.model(model)
    h = hashlib.sha256()
    cls = type(model)
    _feed(h, b"robustx-model", f"{cls.__module__}.{cls.__qualname__}".encode(), repr(model).encode())
    for name, t in model.state_dict().items():
        _feed_tensor(h, name, t)
    return h.hexdigest()


def data_digest(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> str:
    """sha256 hex digest of inputs ``x`` and labels ``y`` (or None): dtype, shape and bytes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if y is not None and not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor or None, got {type(y).__name__}")
    h = hashlib.sha256()
    _feed(h, b"robustx-data")
    _feed_tensor(h, "x", x)
    if y is None:
        _feed(h, b"y")
    else:
        _feed_tensor(h, "y", y)
    return h.hexdigest()


def json_digest(value, name: str = "key") -> str:
    """sha256 hex digest of ``value``'s :func:`canonical_json` (TypeError names a non-JSON part)."""
    return hashlib.sha256(canonical_json(value, name).encode()).hexdigest()
