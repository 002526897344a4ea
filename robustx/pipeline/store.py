"""Run identity and the crash-safe results store of an evaluation run.

A run (model + data + metric list + settings) is named by :func:`run_id`. Its results
live in ``store.sqlite`` in the run's output folder: one row per finished unit of work
(a metric or attack over one input batch, named by a string such as
``"attack/pgd/batch-0003"``), each written in its own transaction, so a killed run
resumes where it stopped and gives the same results as an uninterrupted one.

The database runs in WAL mode with ``synchronous=NORMAL``: every commit survives a
killed process (the WAL is written before the commit returns), and the database stays
consistent on power loss; only then may the last few commits roll back, which costs
recomputing those units (results are deterministic), not a wrong report. ``FULL``
would add an fsync per unit for no gain in what a report shows.

Tensors are stored as raw bytes with their dtype and shape, metadata as JSON: nothing
is ever pickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import sqlite3
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Tuple

import torch
from torch import nn

from robustx import checks

__all__ = ["run_id", "canonical_json", "ResultStore", "run_unit", "STORE_FILE"]

STORE_FILE = "store.sqlite"
_FORMAT = 1

Tensors = Dict[str, torch.Tensor]
Result = Tuple[Tensors, dict]

_SCHEMA = """
CREATE TABLE run (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    run_id TEXT NOT NULL,
    settings TEXT NOT NULL,
    format INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE units (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    unit TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE tensors (
    unit TEXT NOT NULL REFERENCES units (unit),
    pos INTEGER NOT NULL,
    name TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (unit, name)
);
"""


# ---------------------------------------------------------------------------------------
# JSON and run identity



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

    Tuples count as lists; non-finite floats are written as ``NaN``/``Infinity``
    (Python's JSON reads them back).
    """
    _check_json(value, name)
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


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


def run_id(model: nn.Module, x: torch.Tensor, y, metrics: Iterable[str], settings: dict) -> str:
    """The sha256 hex digest naming a run.

    It covers the model (class, ``repr`` of its module tree, and every state_dict entry:
    name, dtype, shape, bytes, in order), the data ``x`` and ``y`` (``y`` may be None),
    the metric names (order does not matter) and ``settings`` as canonical JSON.
    """
    checks.model(model)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if y is not None and not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor or None, got {type(y).__name__}")
    if isinstance(metrics, str):
        raise TypeError("metrics must be an iterable of metric names, got a single str")
    names = list(metrics)
    if not all(isinstance(m, str) for m in names):
        raise TypeError(f"metrics must hold metric names (str), got {names!r}")
    _expect(settings, dict, "settings", "a dict")
    h = hashlib.sha256()
    _feed(h, b"robustx-run", str(_FORMAT).encode())
    cls = type(model)
    _feed(h, f"{cls.__module__}.{cls.__qualname__}".encode(), repr(model).encode())
    for name, t in model.state_dict().items():
        _feed_tensor(h, "model." + name, t)
    _feed_tensor(h, "x", x)
    if y is None:
        _feed(h, b"y")
    else:
        _feed_tensor(h, "y", y)
    _feed(h, canonical_json(sorted(names), "metrics").encode())
    _feed(h, canonical_json(settings).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Tensor (de)serialisation


_DTYPES = {str(d): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
    torch.complex128, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.bool,
)}


def _encode(name: str, t) -> Tuple[str, str, bytes]:
    """(dtype, shape JSON, raw bytes) of one tensor to store."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
    if str(t.dtype) not in _DTYPES:
        raise TypeError(f"tensors[{name!r}] has dtype {t.dtype}, which the store does not hold "
                        f"(accepted: {', '.join(_DTYPES)})")
    return str(t.dtype), json.dumps(list(t.shape)), bytes(_raw(t))


def _decode(dtype: str, shape: str, data: bytes) -> torch.Tensor:
    """The tensor that :func:`_encode` stored (a fresh CPU tensor)."""
    dt = _DTYPES[dtype]
    dims = json.loads(shape)
    if not data:
        return torch.empty(dims, dtype=dt)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt).reshape(dims)


# ---------------------------------------------------------------------------------------
# The store


def _settings_diff(old: dict, new: dict) -> List[str]:
    """Human-readable lines for each top-level setting that differs."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            lines.append(f"  {key}: {old[key]!r} (stored) -> absent (now)")
        elif key not in old:
            lines.append(f"  {key}: absent (stored) -> {new[key]!r} (now)")
        elif old[key] != new[key]:
            lines.append(f"  {key}: {old[key]!r} (stored) -> {new[key]!r} (now)")
    return lines


class ResultStore:
    """The finished units of one run, in ``<folder>/store.sqlite``.

    Open it with :meth:`open`; use it as a context manager or call :meth:`close`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, run_id: str, settings: dict):
        self._conn = conn
        self.path = path
        self.run_id = run_id
        self.settings = settings

    @classmethod
    def open(cls, folder, run_id: str, settings: dict, resume: bool = False) -> "ResultStore":
        """Open (creating if needed) the store of run ``run_id`` in ``folder``.

        A folder holding another run's store raises ValueError listing the settings that
        differ; one holding this run's store needs ``resume=True`` (its finished units
        are kept), else ValueError.
        """
        if not isinstance(run_id, str) or not run_id:
            raise TypeError(f"run_id must be a non-empty str, got {run_id!r}")
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {resume!r}")
        _expect(settings, dict, "settings", "a dict")
        text = canonical_json(settings)
        path = Path(folder) / STORE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            cls._claim(conn, path, run_id, text, resume)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, run_id, json.loads(text))

    @staticmethod
    def _claim(conn: sqlite3.Connection, path: Path, run_id: str, text: str, resume: bool) -> None:
        """Create the schema and run row of a new store, or check that the stored run is
        this one and may be resumed."""
        if _create(conn, run_id, text):
            return
        stored_id, stored, fmt = conn.execute("SELECT run_id, settings, format FROM run").fetchone()
        if fmt != _FORMAT:
            raise ValueError(f"{path} was written in store format {fmt}; this robustx reads format "
                             f"{_FORMAT}. Use a new output folder.")
        if stored_id != run_id:
            diff = _settings_diff(json.loads(stored), json.loads(text))
            what = ("settings that differ:\n" + "\n".join(diff)) if diff else \
                "the settings are the same, so the model, data or metric list differ"
            raise ValueError(f"{path} holds the results of another run (run id {stored_id[:12]}, "
                             f"this run is {run_id[:12]}); {what}\nUse another output folder.")
        if not resume:
            raise ValueError(f"{path} already holds results of this run; pass resume=True to "
                             "continue it, or use a new output folder")

    def done(self, unit: str) -> bool:
        """Whether ``unit`` is finished (stored)."""
        row = self._conn.execute("SELECT 1 FROM units WHERE unit = ?", (_unit(unit),)).fetchone()
        return row is not None

    def put(self, unit: str, tensors: Tensors, meta: dict, seconds: float) -> None:
        """Store a finished unit in one transaction: all of it is stored, or none.

        ``tensors`` maps names to tensors (any device; stored exactly, NaN and inf
        included); ``meta`` is JSON data; ``seconds`` the time the unit took (>= 0).
        A unit is stored once: putting a finished unit again raises ValueError.
        """
        unit = _unit(unit)
        _expect(tensors, dict, "tensors", "a dict of name -> torch.Tensor")
        _expect(meta, dict, "meta", "a dict")
        meta_text = canonical_json(meta, "meta")
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) \
                or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        if self.done(unit):
            raise ValueError(f"unit {unit!r} is already stored; a unit is written once")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO units (unit, meta, seconds) VALUES (?, ?, ?)",
                         (unit, meta_text, float(seconds)))
            for pos, (name, t) in enumerate(tensors.items()):
                if not isinstance(name, str):
                    raise TypeError(f"tensor names must be str, got {name!r}")
                conn.execute("INSERT INTO tensors VALUES (?, ?, ?, ?, ?, ?)", (unit, pos, name, *_encode(name, t)))
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")

    def get(self, unit: str) -> Result:
        """(tensors, meta) of a finished unit; tensors are fresh CPU tensors. KeyError if not done."""
        unit = _unit(unit)
        row = self._conn.execute("SELECT meta FROM units WHERE unit = ?", (unit,)).fetchone()
        if row is None:
            raise KeyError(f"unit {unit!r} is not finished in {self.path}")
        rows = self._conn.execute("SELECT name, dtype, shape, data FROM tensors WHERE unit = ? ORDER BY pos",
                                  (unit,))
        return {name: _decode(dt, shape, data) for name, dt, shape, data in rows}, json.loads(row[0])

    def seconds(self, unit: str) -> float:
        """The time a finished unit took. KeyError if not done."""
        row = self._conn.execute("SELECT seconds FROM units WHERE unit = ?", (_unit(unit),)).fetchone()
        if row is None:
            raise KeyError(f"unit {unit!r} is not finished in {self.path}")
        return row[0]

    def units(self, prefix: str = "") -> List[str]:
        """Finished units whose name starts with ``prefix``, in the order they were stored."""
        _expect(prefix, str, "prefix", "a str")
        rows = self._conn.execute("SELECT unit FROM units ORDER BY seq")
        return [u for (u,) in rows if u.startswith(prefix)]

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _create(conn: sqlite3.Connection, run_id: str, text: str) -> bool:
    """Create the schema and the run row in one transaction unless they exist; True if created."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'run'").fetchone() is None
        if fresh:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO run VALUES (0, ?, ?, ?, ?)", (run_id, text, _FORMAT, time.time()))
    except BaseException:
        _rollback(conn)
        raise
    conn.execute("COMMIT")
    return fresh


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction (SQLite may already have done so on some errors)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _unit(unit) -> str:
    if not isinstance(unit, str) or not unit:
        raise TypeError(f"unit must be a non-empty str such as 'metric/ASS/batch-0003', got {unit!r}")
    return unit


def run_unit(store: ResultStore, unit: str, fn: Callable[[], Result]) -> Result:
    """The result of ``unit``: read from ``store`` if finished, else ``fn()`` timed and stored.

    ``fn`` returns ``(tensors, meta)``. Either way the result is the stored copy (CPU
    tensors), so a resumed run continues from exactly what an uninterrupted one sees.
    """
    if not store.done(unit):
        start = time.perf_counter()
        result = fn()
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(f"fn for unit {unit!r} must return (tensors, meta), got {type(result).__name__}")
        store.put(unit, result[0], result[1], time.perf_counter() - start)
    return store.get(unit)
