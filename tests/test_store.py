"""Run identity and the crash-safe results store (robustx.pipeline.store)."""
import os
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

import store_worker
from robustx.pipeline import store as store_mod
from robustx.pipeline.store import ResultStore, run_id, run_unit

ROOT = Path(__file__).resolve().parents[1]


def _net(act=nn.ReLU):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), act())


def _ident(net=None, x=None, y=None, metrics=("clever", "ASS"), settings=None):
    net = net if net is not None else _net()
    x = x if x is not None else torch.linspace(0, 1, 24).reshape(2, 3, 2, 2)
    y = y if y is not None else torch.tensor([0, 3])
    return run_id(net, x, y, list(metrics), settings if settings is not None else {"eps": 0.03, "norm": "inf"})


# ---------------------------------------------------------------------------------------
# run identity


def test_run_id_is_stable_and_ignores_metric_order():
    a = _ident()
    assert len(a) == 64 and a == _ident()
    assert _ident(metrics=("ASS", "clever")) == a
    assert _ident(settings={"norm": "inf", "eps": 0.03}) == a


def test_run_id_changes_with_every_input():
    base = _ident()
    net = _net()
    with torch.no_grad():
        net[1].weight[2, 5] += 1e-6
    x = torch.linspace(0, 1, 24).reshape(2, 3, 2, 2)
    x[1, 2, 0, 1] += 1e-6
    changed = [
        _ident(net=net),
        _ident(net=_net(nn.Tanh)),  # same state_dict, other architecture
        _ident(x=x),
        _ident(x=torch.linspace(0, 1, 24).reshape(2, 12)),  # same bytes, other shape
        _ident(x=torch.linspace(0, 1, 24, dtype=torch.float64).reshape(2, 3, 2, 2)),
        _ident(y=torch.tensor([0, 2])),
        _ident(metrics=("clever",)),
        _ident(settings={"eps": 0.031, "norm": "inf"}),
        _ident(settings={"eps": 0.03, "norm": "inf", "seed": 0}),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_run_id_rejects_non_json_settings_naming_the_key():
    with pytest.raises(TypeError, match=r"settings\['attack'\]\['eps'\]"):
        _ident(settings={"attack": {"eps": {0.1, 0.2}}})
    with pytest.raises(TypeError, match="keys must be strings"):
        _ident(settings={1: "a"})
    with pytest.raises(TypeError, match="model"):
        run_id("net", torch.zeros(1, 2), None, [], {})


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
    with ResultStore.open(tmp_path, "r1", {"a": 1}) as st:
        st.put("metric/ASS/batch-0000", _tensors(), {"note": "x", "n": [1, 2]}, 0.25)
        got, meta = st.get("metric/ASS/batch-0000")
        assert st.seconds("metric/ASS/batch-0000") == 0.25
    assert meta == {"note": "x", "n": [1, 2]}
    want = _tensors()
    assert list(got) == list(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t) or torch.equal(got[name].isnan(), t.isnan()), name
    assert torch.equal(got["f32"].isnan(), want["f32"].isnan())
    assert torch.equal(got["f32"].nan_to_num(0.0), want["f32"].nan_to_num(0.0))


def test_store_is_sqlite_in_wal_mode_with_one_row_per_unit(tmp_path):
    with ResultStore.open(tmp_path, "r1", {}) as st:
        st.put("u", {"a": torch.ones(2)}, {}, 0.0)
        conn = sqlite3.connect(tmp_path / "store.sqlite")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT unit FROM units").fetchall() == [("u",)]
        conn.close()


def test_units_done_and_errors(tmp_path):
    with ResultStore.open(tmp_path, "r1", {}) as st:
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

    with ResultStore.open(tmp_path, "r1", {}) as st:
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


def test_open_refuses_another_run_and_needs_resume_for_the_same(tmp_path):
    with ResultStore.open(tmp_path, "run-a", {"eps": 0.03, "norm": "inf", "steps": 10}) as st:
        st.put("u0", {"a": torch.ones(1)}, {}, 0.0)
    with pytest.raises(ValueError, match=r"another run(.|\n)*eps: 0\.03 \(stored\) -> 0\.05(.|\n)*steps") as err:
        ResultStore.open(tmp_path, "run-b", {"eps": 0.05, "norm": "inf"})
    assert "norm" not in str(err.value)
    with pytest.raises(ValueError, match="model, data or metric"):
        ResultStore.open(tmp_path, "run-b", {"eps": 0.03, "norm": "inf", "steps": 10})
    with pytest.raises(ValueError, match="resume=True"):
        ResultStore.open(tmp_path, "run-a", {"eps": 0.03, "norm": "inf", "steps": 10})
    with ResultStore.open(tmp_path, "run-a", {"eps": 0.03, "norm": "inf", "steps": 10}, resume=True) as st:
        assert st.units() == ["u0"] and st.settings["steps"] == 10
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    with conn:
        conn.execute("UPDATE run SET format = 99")
    conn.close()
    with pytest.raises(ValueError, match="store format 99"):
        ResultStore.open(tmp_path, "run-a", {"eps": 0.03, "norm": "inf", "steps": 10}, resume=True)


def test_run_unit_computes_once(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return {"v": torch.tensor([1.0, 2.0])}, {"k": 1}

    with ResultStore.open(tmp_path, "r", {}) as st:
        first = run_unit(st, "u", fn)
        second = run_unit(st, "u", fn)
        assert st.seconds("u") >= 0
    assert len(calls) == 1
    assert torch.equal(first[0]["v"], second[0]["v"]) and first[1] == second[1] == {"k": 1}
    with ResultStore.open(tmp_path, "r", {}, resume=True) as st:
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
