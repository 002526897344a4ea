"""Content keys and the crash-safe results store (robustx.pipeline.store): digests, exact
round trips, checksums that catch changed bytes, one-line errors for damaged, read-only
and full stores, and a SIGKILLed worker that resumes to the uninterrupted result."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustx.pipeline import store as store_mod
from robustx.pipeline.store import ResultStore, StoreError, data_digest, json_digest, model_digest, run_unit

from . import store_worker

ROOT = Path(__file__).resolve().parents[2]
FP = {"model weights": "m1", "data (inputs or labels)": "d1"}


def _net(act=nn.ReLU):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), act())


# ---------------------------------------------------------------------------------------
# digests


def test_digests_are_stable_and_change_with_every_input():
    x = torch.linspace(0, 1, 24).reshape(2, 3, 2, 2)
    y = torch.tensor([0, 3])
    assert model_digest(_net()) == model_digest(_net()) and data_digest(x, y) == data_digest(x.clone(), y.clone())
    assert json_digest({"eps": 0.03, "norm": "inf"}) == json_digest({"norm": "inf", "eps": 0.03})
    net = _net()
    with torch.no_grad():
        net[1].weight[2, 5] += 1e-6
    models = {model_digest(_net()), model_digest(net), model_digest(_net(nn.Tanh))}  # same state_dict, other layers
    assert len(models) == 3
    nudged = x.clone()
    nudged[1, 2, 0, 1] += 1e-6
    data = [data_digest(x, y), data_digest(nudged, y), data_digest(x.reshape(2, 12), y),  # same bytes, other shape
            data_digest(x.double(), y), data_digest(x, torch.tensor([0, 2])), data_digest(x)]
    assert len(set(data)) == len(data)
    assert len({json_digest({"eps": 0.03}), json_digest({"eps": 0.031}), json_digest({"eps": 0.03, "seed": 0})}) == 3


def test_digests_reject_bad_arguments_naming_them():
    with pytest.raises(TypeError, match=r"key\['attack'\]\['eps'\]"):
        json_digest({"attack": {"eps": {0.1, 0.2}}})
    with pytest.raises(TypeError, match="keys must be strings"):
        json_digest({1: "a"})
    with pytest.raises(TypeError, match="model"):
        model_digest("net")
    with pytest.raises(TypeError, match="y must be"):
        data_digest(torch.zeros(2), [0, 1])


# ---------------------------------------------------------------------------------------
# the store


def _tensors():
    return {
        "f32": torch.tensor([[1.5, float("nan")], [float("inf"), -float("inf")]]),
        "bool": torch.tensor([True, False, True]),
        "i64": torch.tensor([2 ** 62, -7, 0]),
        "bf16": torch.tensor([0.1, 3.0], dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4, dtype=torch.float64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "strided": torch.arange(10)[::3],
    }


def test_tensors_and_meta_round_trip_exactly(tmp_path):
    with ResultStore.open(tmp_path, FP) as st:
        st.put("metric/ASS/batch-0000", _tensors(), {"note": "x", "n": [1, 2]}, 0.25)
        got, meta = st.get("metric/ASS/batch-0000")
        assert st.load("metric/ASS/batch-0000").seconds == 0.25
    assert meta == {"note": "x", "n": [1, 2]}
    want = _tensors()
    assert list(got) == list(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t) or torch.equal(got[name].isnan(), t.isnan()), name
    assert torch.equal(got["f32"].isnan(), want["f32"].isnan())
    assert torch.equal(got["f32"].nan_to_num(0.0), want["f32"].nan_to_num(0.0))


def test_store_is_sqlite_in_wal_mode_with_one_row_per_unit(tmp_path):
    with ResultStore.open(tmp_path, FP) as st:
        st.put("u", {"a": torch.ones(2)}, {}, 0.0)
        conn = sqlite3.connect(tmp_path / "store.sqlite")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT unit FROM units").fetchall() == [("u",)]
        conn.close()


def test_units_done_and_errors(tmp_path):
    with ResultStore.open(tmp_path, FP) as st:
        for u in ["attack/pgd/batch-0001", "metric/ASS/batch-0000", "attack/pgd/batch-0000"]:
            st.put(u, {}, {}, 0.0)
        assert st.units() == ["attack/pgd/batch-0001", "metric/ASS/batch-0000", "attack/pgd/batch-0000"]
        assert st.units("attack/") == ["attack/pgd/batch-0001", "attack/pgd/batch-0000"]
        assert st.done("metric/ASS/batch-0000") and not st.done("metric/ASS/batch-0001")
        with pytest.raises(ValueError, match="already stored"):
            st.put("metric/ASS/batch-0000", {}, {}, 0.0)
        with pytest.raises(KeyError):
            st.get("metric/ASS/batch-0001")
        with pytest.raises(TypeError, match="tensors\\['a'\\]"):
            st.put("v", {"a": [1.0]}, {}, 0.0)
        with pytest.raises(TypeError, match="meta"):
            st.put("v", {}, {"f": object()}, 0.0)
        with pytest.raises(ValueError, match="seconds"):
            st.put("v", {}, {}, -1.0)
        with pytest.raises(TypeError, match="unit"):
            st.done("")
        assert not st.done("v")


def test_put_is_atomic(tmp_path, monkeypatch):
    real = store_mod._encode

    def fail_on_second(name, t):
        if name == "b":
            raise RuntimeError("disk on fire")
        return real(name, t)

    with ResultStore.open(tmp_path, FP) as st:
        monkeypatch.setattr(store_mod, "_encode", fail_on_second)
        with pytest.raises(RuntimeError, match="disk on fire"):
            st.put("u", {"a": torch.ones(2), "b": torch.ones(2)}, {}, 0.0)
        monkeypatch.setattr(store_mod, "_encode", real)
        assert not st.done("u") and st.units() == []
        conn = sqlite3.connect(tmp_path / "store.sqlite")
        assert conn.execute("SELECT count(*) FROM tensors").fetchone()[0] == 0
        conn.close()
        st.put("u", {"a": torch.ones(2), "b": torch.zeros(2)}, {}, 0.0)
        assert torch.equal(st.get("u")[0]["b"], torch.zeros(2))


def test_open_reuses_only_the_same_model_and_data_with_resume(tmp_path):
    with ResultStore.open(tmp_path, {**FP, "profile data": "p1"}) as st:
        st.put("u0", {"a": torch.ones(1)}, {}, 0.0)
    other = {"model weights": "m2", "data (inputs or labels)": "d2", "profile data": "p1"}
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"another run: model weights differ; data \(inputs or labels\) differ\."):
            ResultStore.open(tmp_path, other, resume=resume)
    with pytest.raises(ValueError, match="1 finished units .* pass --resume to reuse them"):
        ResultStore.open(tmp_path, FP, resume_hint="--resume")
    # a role absent from one of the runs is no conflict; the store records the union
    with ResultStore.open(tmp_path, {**FP, "surrogate model weights": "s1"}, resume=True) as st:
        assert st.units() == ["u0"] and st.fingerprint == {**FP, "profile data": "p1", "surrogate model weights": "s1"}
    with pytest.raises(ValueError, match="surrogate model weights differ"):
        ResultStore.open(tmp_path, {**FP, "surrogate model weights": "s2"}, resume=True)


def test_a_store_without_finished_units_is_claimed_afresh(tmp_path):
    ResultStore.open(tmp_path, FP).close()  # e.g. a run that failed before its first unit
    other = {"model weights": "m2", "data (inputs or labels)": "d2"}
    with ResultStore.open(tmp_path, other) as st:
        assert st.fingerprint == other and st.units() == []


def test_a_store_of_another_format_is_refused_in_one_line(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.sqlite")  # format 1: the run row held a run id and settings
    with conn:
        conn.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, run_id TEXT, settings TEXT, format INTEGER, "
                     "created REAL)")
        conn.execute("INSERT INTO run VALUES (0, 'abc', '{}', 1, 0.0)")
    conn.close()
    with pytest.raises(StoreError, match=r"store\.sqlite was written by an older robustx \(store format 1; .*"
                                         r"choose another output folder") as err:
        ResultStore.open(tmp_path, FP, resume=True)
    assert isinstance(err.value, RuntimeError) and "\n" not in str(err.value)


def _flip_byte(path: Path, unit_prefix: str, index: int = 0) -> str:
    """XOR 0x40 into the most significant byte of float64 element ``index`` of the first
    tensor of the first unit named ``unit_prefix...`` (an exponent bit: the value always
    changes); the unit's name."""
    conn = sqlite3.connect(path)
    with conn:
        unit, data = conn.execute("SELECT unit, data FROM tensors WHERE unit LIKE ? ORDER BY unit, pos LIMIT 1",
                                  (unit_prefix + "%",)).fetchone()
        data = bytearray(data)
        data[8 * index + 7] ^= 0x40
        conn.execute("UPDATE tensors SET data = ? WHERE unit = ? AND pos = 0", (bytes(data), unit))
    conn.close()
    return unit


def test_a_changed_stored_byte_is_detected_and_the_unit_computed_again(tmp_path):
    calls = []

    def fn(i):
        calls.append(i)
        return {"v": torch.arange(4, dtype=torch.float64) + i}, {"i": i}

    with ResultStore.open(tmp_path, FP) as st:
        want = [run_unit(st, f"u{i}", lambda i=i: fn(i))[0]["v"] for i in range(3)]
    assert _flip_byte(tmp_path / "store.sqlite", "u1", index=2) == "u1"
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    stored = np.frombuffer(conn.execute("SELECT data FROM tensors WHERE unit = 'u1'").fetchone()[0], np.float64)
    conn.close()
    assert stored[2] == 2.0 ** -1023  # the bytes did change: 3.0 (0x4008...) became 0x0008...
    with ResultStore.open(tmp_path, FP, resume=True) as st:
        with pytest.warns(RuntimeWarning, match="unit 'u1' does not match its checksum"):
            got = [run_unit(st, f"u{i}", lambda i=i: fn(i))[0]["v"] for i in range(3)]
        assert st.units() == ["u0", "u2", "u1"]
    assert calls == [0, 1, 2, 1]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_changed_meta_or_seconds_are_detected_too(tmp_path):
    with ResultStore.open(tmp_path, FP) as st:
        st.put("a", {"v": torch.ones(2)}, {"n": 1}, 0.5)
        st.put("b", {"v": torch.ones(2)}, {"n": 1}, 0.5)
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    with conn:
        conn.execute("UPDATE units SET meta = '{\"n\":2}' WHERE unit = 'a'")
        conn.execute("UPDATE units SET seconds = 0.25 WHERE unit = 'b'")
    conn.close()
    with ResultStore.open(tmp_path, FP, resume=True) as st:
        for unit in ("a", "b"):
            with pytest.warns(RuntimeWarning, match=f"unit '{unit}'"):
                assert st.load(unit) is None
        assert st.units() == []


def _store_with_units(folder: Path, n: int = 6) -> Path:
    with ResultStore.open(folder, FP) as st:
        for i in range(n):
            st.put(f"u{i}", {"a": torch.rand(3000, dtype=torch.float64)}, {}, 0.1)
    return folder / "store.sqlite"


def _open_and_read(folder: Path) -> None:
    with ResultStore.open(folder, FP, resume=True) as st:
        for unit in st.units():
            st.load(unit)


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "cut to one page"])
def test_a_damaged_store_file_gives_one_line_naming_it(tmp_path, damage):
    path = _store_with_units(tmp_path)
    if damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    else:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2 if damage == "truncated" else 4096)
    with pytest.raises(StoreError) as err:
        _open_and_read(tmp_path)
    text = str(err.value)
    assert text.startswith(f"{path} is damaged or not a robustx store") and "delete it" in text and "\n" not in text


def test_an_unwritable_store_gives_one_line_naming_the_folder(tmp_path, monkeypatch):
    """SQLite's own read-only errors: connections opened read-only stand in for a folder
    without write permission (which root, running these tests here, ignores)."""
    _store_with_units(tmp_path / "old", 0)
    (tmp_path / "new").mkdir()
    real = sqlite3.connect
    monkeypatch.setattr(store_mod.sqlite3, "connect", lambda path, **kw: real(f"file:{path}?mode=ro", uri=True, **kw))
    for folder in (tmp_path / "new", tmp_path / "old"):  # no store yet (cannot create) / a store (cannot write)
        with pytest.raises(StoreError, match=f"cannot write the store in {re.escape(str(folder))} .*read-only") as err:
            ResultStore.open(folder, FP)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_gives_one_line_naming_it(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=f"cannot write the store in {re.escape(str(folder))} .*read-only"):
            ResultStore.open(folder, FP)
    finally:
        folder.chmod(0o755)


def test_a_full_disk_gives_one_line_and_keeps_the_store_consistent(tmp_path):
    with ResultStore.open(tmp_path, FP) as st:
        st.put("small", {"a": torch.ones(4)}, {}, 0.0)
        pages = st._conn.execute("PRAGMA page_count").fetchone()[0]
        st._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own "disk full" (SQLITE_FULL)
        full = f"cannot write the store in {re.escape(str(tmp_path))}: the disk is full"
        with pytest.raises(StoreError, match=full) as err:
            st.put("big", {"a": torch.zeros(100_000)}, {}, 0.0)
        assert "\n" not in str(err.value)
        assert st.units() == ["small"] and torch.equal(st.get("small")[0]["a"], torch.ones(4))
    with ResultStore.open(tmp_path, FP, resume=True) as st:  # the limit was per connection: resuming works
        st.put("big", {"a": torch.zeros(100_000)}, {}, 0.0)
        assert st.units() == ["small", "big"]


def test_another_os_error_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=f"the store {re.escape(str(blocker / 'out' / 'store.sqlite'))} failed"):
        ResultStore.open(blocker / "out", FP)


def test_run_unit_computes_once(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"v": torch.tensor([1.0, 2.0])}, {"k": 1}

    with ResultStore.open(tmp_path, FP) as st:
        first = run_unit(st, "u", fn)
        second = run_unit(st, "u", fn)
        assert st.load("u").seconds >= 0
    assert len(calls) == 1
    assert torch.equal(first[0]["v"], second[0]["v"]) and first[1] == second[1] == {"k": 1}
    with ResultStore.open(tmp_path, FP, resume=True) as st:
        with pytest.raises(TypeError, match="tensors, meta"):
            run_unit(st, "w", lambda: torch.ones(1))


# ---------------------------------------------------------------------------------------
# crash safety: SIGKILL a real worker process and resume it


def _finished(folder: Path):
    """Finished units, read through a separate read-only connection ([] before the schema exists)."""
    path = folder / "store.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [u for (u,) in conn.execute("SELECT unit FROM units ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _worker(folder: Path, n: int, delay: float):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("store_worker.py")),
                             str(folder), str(n), str(delay)], env=env)


def _log(folder: Path):
    path = folder / "computed.log"
    return path.read_text().split() if path.exists() else []


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    n = 12
    reference = store_worker.main(tmp_path / "reference", n, 0.0)
    folder = tmp_path / "killed"
    kills = []  # (finished units at the kill, log length at the kill)
    for target in (3, 7):
        proc = _worker(folder, n, 0.05)
        deadline = time.monotonic() + 60
        while len(_finished(folder)) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the worker finished before it was killed"
        done = _finished(folder)
        assert target <= len(done) < n
        kills.append((done, len(_log(folder))))
    assert not (folder / "result.npy").exists()
    result = store_worker.main(folder, n, 0.0)  # the last resume runs here (saves a torch import)
    assert torch.equal(result, reference)
    assert torch.equal(torch.from_numpy(np.load(folder / "result.npy", allow_pickle=False)), reference)
    assert _finished(folder) == [f"unit-{i:02d}" for i in range(n)]
    log = _log(folder)
    for done, at in kills:
        assert not set(done) & set(log[at:]), "a finished unit was computed again after resuming"
    assert set(log) == set(_finished(folder))
    assert len(log) <= n + len(kills)  # at most the unit in flight at each kill is redone
