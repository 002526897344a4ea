"""The crash-safe results store of an evaluation run, its units named by content keys
(:mod:`robustx.pipeline.digests`, re-exported here).

A unit of work (an attack or a heavy metric over one input batch) is named by what its
result depends on: a readable label such as ``"attack/pgd@model/batch-0003"`` and the
sha256 of the model weights, inputs, settings and seed it uses (:func:`json_digest` over
:func:`model_digest` / :func:`data_digest` values). Its result lives in ``store.sqlite``
in the run's output folder, one row per finished unit, each written in its own
transaction, so a killed run resumes where it stopped and gives the same results as an
uninterrupted one, and a later run in the same folder with other metrics or settings
reuses every unit whose key is unchanged.

The database runs in WAL mode with ``synchronous=NORMAL``: every commit survives a
killed process (the WAL is written before the commit returns), and the database stays
consistent on power loss; only then may the last few commits roll back, which costs
recomputing those units (results are deterministic), not a wrong report. ``FULL``
would add an fsync per unit for no gain in what a report shows.

Tensors are stored as raw bytes with their dtype and shape, metadata as JSON
(:mod:`robustx.jsonio`, NaN and infinities included): nothing is ever pickled. Each unit
carries a sha256 checksum of its tensors, metadata and seconds, verified on every read:
a unit whose bytes changed is reported and computed again. A store file that SQLite
cannot read or write raises :class:`StoreError` (a RuntimeError) with one line naming
the file and what to do.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import numbers
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from robustx import jsonio
from robustx.pipeline.digests import _expect, _feed, _raw, canonical_json, data_digest, json_digest, model_digest

__all__ = ["model_digest", "data_digest", "json_digest", "canonical_json", "ResultStore", "Stored", "StoreError",
           "run_unit", "STORE_FILE"]

STORE_FILE = "store.sqlite"
_FORMAT = 3  # 2: units keyed by content, checksummed, the run row holding the digests of its model and data;
#            3: per-input states of the means over S, eps-ENI's terms, NU per neuron
_ELSEWHERE = "delete it or choose another output folder (out= / --out)"

Tensors = Dict[str, torch.Tensor]
Result = Tuple[Tensors, dict]

_SCHEMA = """
CREATE TABLE run (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    fingerprint TEXT NOT NULL,
    format INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE units (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    unit TEXT NOT NULL UNIQUE,
    meta TEXT NOT NULL,
    seconds REAL NOT NULL,
    checksum TEXT NOT NULL
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


class StoreError(RuntimeError):
    """The store file cannot be read or written (damaged file, read-only folder, full disk)."""


class Stored(NamedTuple):
    """A finished unit as stored: fresh CPU tensors, its metadata and the seconds it took."""

    tensors: Tensors
    meta: dict
    seconds: float


def _checksum(meta: str, seconds: float, rows) -> str:
    """sha256 over a unit's meta JSON, seconds and (name, dtype, shape, bytes) rows, in order."""
    h = hashlib.sha256()
    _feed(h, b"robustx-unit", meta.encode(), repr(float(seconds)).encode())
    for name, dtype, shape, data in rows:
        _feed(h, name.encode(), dtype.encode(), shape.encode(), data)
    return h.hexdigest()


def _explain(path: Path, err: Exception) -> str:
    """One line saying why the store at ``path`` failed and what to do."""
    code = getattr(err, "sqlite_errorname", "") or ""
    if code.startswith("SQLITE_FULL") or getattr(err, "errno", None) == errno.ENOSPC:
        return f"cannot write the store in {path.parent}: the disk is full ({err}); free some space and resume, " \
               "or choose another output folder"
    if code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")) \
            or isinstance(err, PermissionError):
        return f"cannot write the store in {path.parent} ({err}): the folder is read-only or not writable; " \
               "choose another output folder"
    if code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return f"{path} is damaged or not a robustx store ({err}); {_ELSEWHERE}"
    return f"the store {path} failed ({type(err).__name__}: {err}); {_ELSEWHERE}"


@contextlib.contextmanager
def _guard(path: Path):
    """Turn SQLite's and the file system's errors on the store into a one-line StoreError."""
    try:
        yield
    except (sqlite3.Error, OSError) as err:
        raise StoreError(_explain(path, err)) from err


class ResultStore:
    """The finished units of the runs in one folder, in ``<folder>/store.sqlite``.

    Open it with :meth:`open`; use it as a context manager or call :meth:`close`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, fingerprint: Dict[str, str]):
        self._conn = conn
        self.path = path
        self.fingerprint = fingerprint

    @classmethod
    def open(cls, folder, fingerprint: Dict[str, str], resume: bool = False,
             resume_hint: str = "resume=True") -> "ResultStore":
        """Open (creating if needed) the store in ``folder`` for a run made of ``fingerprint``.

        ``fingerprint`` maps what the run is made of to its digest, e.g.
        ``{"model weights": ..., "data (inputs or labels)": ...}``. A store that holds
        finished units is refused (ValueError) when an entry present in both differs
        ("model weights differ"), and otherwise reused only with ``resume=True`` (else
        ValueError telling the user to pass ``resume_hint``); entries new to this run are
        added. A store without finished units is claimed afresh. A store of another
        format, or one SQLite cannot read or write, raises :class:`StoreError`.
        """
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {resume!r}")
        if not isinstance(fingerprint, dict) or not fingerprint \
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in fingerprint.items()):
            raise TypeError(f"fingerprint must map names (str) to digests (str), got {fingerprint!r}")
        path = Path(folder) / STORE_FILE
        with _guard(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                merged = _claim(conn, path, dict(fingerprint), resume, resume_hint)
            except BaseException:
                conn.close()
                raise
        return cls(conn, path, merged)

    def done(self, unit: str) -> bool:
        """Whether ``unit`` is stored (its checksum is verified when it is read)."""
        with _guard(self.path):
            row = self._conn.execute("SELECT 1 FROM units WHERE unit = ?", (_unit(unit),)).fetchone()
        return row is not None

    def put(self, unit: str, tensors: Tensors, meta: dict, seconds: float) -> None:
        """Store a finished unit and its checksum in one transaction: all of it, or none.

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
        for name in tensors:
            if not isinstance(name, str):
                raise TypeError(f"tensor names must be str, got {name!r}")
        rows = [(name, *_encode(name, t)) for name, t in tensors.items()]
        if self.done(unit):
            raise ValueError(f"unit {unit!r} is already stored; a unit is written once")
        checksum = _checksum(meta_text, float(seconds), rows)
        conn = self._conn
        with _guard(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT INTO units (unit, meta, seconds, checksum) VALUES (?, ?, ?, ?)",
                             (unit, meta_text, float(seconds), checksum))
                conn.executemany("INSERT INTO tensors VALUES (?, ?, ?, ?, ?, ?)",
                                 [(unit, pos, *row) for pos, row in enumerate(rows)])
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def load(self, unit: str) -> Optional[Stored]:
        """The stored ``unit``, or None when it is not stored. A unit whose bytes no longer
        match its checksum is deleted with a warning naming it, and None returned (so it
        is computed again)."""
        unit = _unit(unit)
        with _guard(self.path):
            row = self._conn.execute("SELECT meta, seconds, checksum FROM units WHERE unit = ?", (unit,)).fetchone()
            if row is None:
                return None
            rows = self._conn.execute("SELECT name, dtype, shape, data FROM tensors WHERE unit = ? ORDER BY pos",
                                      (unit,)).fetchall()
        meta, seconds, checksum = row
        if _checksum(meta, seconds, rows) != checksum:
            warnings.warn(f"{self.path}: unit {unit!r} does not match its checksum (the file was changed or "
                          "damaged); computing it again", RuntimeWarning, stacklevel=2)
            self._delete(unit)
            return None
        return Stored({name: _decode(dt, shape, data) for name, dt, shape, data in rows}, jsonio.loads(meta), seconds)

    def get(self, unit: str) -> Result:
        """(tensors, meta) of a finished, intact unit (fresh CPU tensors); KeyError if there is none."""
        found = self.load(unit)
        if found is None:
            raise KeyError(f"unit {unit!r} is not finished in {self.path}")
        return found.tensors, found.meta

    def units(self, prefix: str = "") -> List[str]:
        """Finished units whose name starts with ``prefix``, in the order they were stored."""
        _expect(prefix, str, "prefix", "a str")
        with _guard(self.path):
            rows = self._conn.execute("SELECT unit FROM units ORDER BY seq").fetchall()
        return [u for (u,) in rows if u.startswith(prefix)]

    def _delete(self, unit: str) -> None:
        with _guard(self.path):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM tensors WHERE unit = ?", (unit,))
                self._conn.execute("DELETE FROM units WHERE unit = ?", (unit,))
                self._conn.execute("COMMIT")
            except BaseException:
                _rollback(self._conn)
                raise

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _claim(conn: sqlite3.Connection, path: Path, fingerprint: Dict[str, str], resume: bool,
           resume_hint: str) -> Dict[str, str]:
    """Create the store, or check that its finished units may be reused by this run (see
    :meth:`ResultStore.open`); the fingerprint the store records from now on."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'run'").fetchone() is None:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO run VALUES (0, ?, ?, ?)", (canonical_json(fingerprint), _FORMAT, time.time()))
            conn.execute("COMMIT")
            return fingerprint
        fmt = conn.execute("SELECT format FROM run").fetchone()[0]
        if fmt != _FORMAT:
            raise StoreError(f"{path} was written by {'an older' if fmt < _FORMAT else 'a newer'} robustx (store "
                             f"format {fmt}; this one reads format {_FORMAT}); {_ELSEWHERE}")
        n_units = conn.execute("SELECT count(*) FROM units").fetchone()[0]
        if n_units:
            stored = jsonio.loads(conn.execute("SELECT fingerprint FROM run").fetchone()[0])
            differ = [f"{k} differ" for k in fingerprint if k in stored and stored[k] != fingerprint[k]]
            if differ:
                raise ValueError(f"{path} holds the results of another run: {'; '.join(differ)}. "
                                 f"Use another output folder, or delete {path}")
            if not resume:
                raise ValueError(f"{path} already holds {n_units} finished units of this model and data; pass "
                                 f"{resume_hint} to reuse them, or use another output folder")
            fingerprint = {**stored, **fingerprint}
        conn.execute("UPDATE run SET fingerprint = ?", (canonical_json(fingerprint),))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return fingerprint


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction (SQLite may already have done so on some errors)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _unit(unit) -> str:
    if not isinstance(unit, str) or not unit:
        raise TypeError(f"unit must be a non-empty str such as 'metric/ASS/batch-0003', got {unit!r}")
    return unit


def run_unit(store: ResultStore, unit: str, fn: Callable[[], Result]) -> Result:
    """The result of ``unit``: read from ``store`` if finished and intact, else ``fn()``
    timed and stored.

    ``fn`` returns ``(tensors, meta)``. Either way the result is the stored copy (CPU
    tensors), so a resumed run continues from exactly what an uninterrupted one sees.
    """
    found = store.load(unit)
    if found is not None:
        return found.tensors, found.meta
    start = time.perf_counter()
    result = fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"fn for unit {unit!r} must return (tensors, meta), got {type(result).__name__}")
    store.put(unit, result[0], result[1], time.perf_counter() - start)
    return store.get(unit)
