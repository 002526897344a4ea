"""Scale-out under torchrun (gloo on CPU, one thread per process): a 2-process evaluate gives
the report of a 1-process one, a run whose rank was killed resumes to the same values, the
building blocks merge exactly, and bad setups get a clear error."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from robustx.coverage import NeuronCoverage
from robustx.neurons import RunningMoments

HERE = Path(__file__).resolve().parent
# every metric that needs no second model, including the profiled coverage metrics (the
# digits data come with their training split as profile) and the ones that once ran on rank 0 alone
METRICS = "CA,AA_W,ALD_2,ASS,NTE,NC,KMNC,NBC,SNAC,TKNC,TKNP,DIV,EBD,mCE,rmCE,NS,NU,eps-ENI,CLEVER"
CONFIG = """[clever]
n_images = 3
n_batches = 4
n_samples = 8
[ebd]
m = 2
steps = 4
bisection = 3
[div]
steps = 2
[corruption]
corruptions = ["impulse_noise", "contrast"]
severities = [3]
"""
ENV = dict(os.environ, OMP_NUM_THREADS="1", ROBUSTX_NO_PROGRESS="1")


def _torchrun(nproc: int, *args: str):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _evaluate(out: Path, n: int = 48, resume: bool = False):
    config = out.parent / f"{out.name}.toml"
    config.write_text(CONFIG)
    return ["-m", "robustx", "evaluate", "--model", "digits", "-n", str(n), "--metrics", METRICS,
            "--config", str(config), "--batch-size", "8", "--out", str(out), "--no-progress",
            *(["--resume"] if resume else [])]


def _values(out: Path) -> dict:
    return {k: m["value"] for k, m in json.loads((out / "report.json").read_text())["metrics"].items()}


def _assert_same_values(got: dict, want: dict) -> None:
    """The ranks make the single process's batches of 8 (batch i on rank i mod 2), so every
    value is the same computation and normally equal to the bit; another process count may
    still change float32 rounding (thread pools, memory alignment), hence rel 1e-6. A count
    metric (CA, AA_W, NC, TKNP ...) that changed would differ by at least 1/48 and fail."""
    assert set(got) == set(want)
    for key, value in want.items():
        expected = value if value is None else pytest.approx(value, rel=1e-6, abs=1e-12, nan_ok=True)  # None: skipped
        assert got[key] == expected, key


def _units(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'store.sqlite'}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, *_evaluate(out)], check=True, env=ENV, capture_output=True, timeout=600)
    return out


def test_two_processes_give_the_one_process_report(single, tmp_path):
    proc = subprocess.run(_torchrun(2, *_evaluate(tmp_path)), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_values(_values(tmp_path), _values(single))
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["run"]["processes"] == 2


def test_a_killed_rank_resumes_to_the_same_report(single, tmp_path):
    total = _units(single)
    proc = subprocess.Popen(_torchrun(2, *_evaluate(tmp_path)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while _units(tmp_path) < total // 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun then stops the other
    proc.wait(timeout=120)
    assert proc.returncode != 0 and 0 < _units(tmp_path) < total
    done = subprocess.run(_torchrun(2, *_evaluate(tmp_path, resume=True)), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_values(_values(tmp_path), _values(single))


def test_building_blocks_merge_exactly(tmp_path):
    proc = subprocess.run(_torchrun(2, str(HERE / "dist_worker.py"), "blocks", str(tmp_path)), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank holds the merged result
    values = torch.arange(10 * 3, dtype=torch.float64).reshape(10, 3) ** 1.5
    assert ranks[0]["n"] == 10
    torch.testing.assert_close(torch.tensor(ranks[0]["mean"], dtype=torch.float64), values.mean(0))
    torch.testing.assert_close(torch.tensor(ranks[0]["var"], dtype=torch.float64), values.var(0, correction=0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    # one process over the ranks' batches (x[0::2], x[1::2]: the neuron values are the same
    # computation), so OR-merging must give exactly its result
    whole = NeuronCoverage(model, top_k=1, progress=False).profile(x).update(x[0::2]).update(x[1::2])
    assert ranks[0]["coverage"] == json.loads(json.dumps(whole.result().to_dict()))
    # the profile's own inputs in batches of 6 instead of 12: last-bit noise is no corner case
    assert ranks[0]["coverage"]["NBC"] == 0 and ranks[0]["coverage"]["SNAC"] == 0
    assert ranks[0]["gathered"] == [[i, i * i] for i in range(7)]


def test_running_moments_merge_in_any_split():
    values = torch.randn(37, 5, dtype=torch.float64)
    merged = RunningMoments().update(values[:11]).merge(RunningMoments().update(values[11:]))
    torch.testing.assert_close(merged.variance(), values.var(0, correction=0))


def test_ranks_with_different_settings_are_refused(tmp_path):
    proc = subprocess.run(_torchrun(2, str(HERE / "dist_worker.py"), "disagree", str(tmp_path)), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for r in (0, 1):
        assert "the ranks disagree" in (tmp_path / f"error{r}.txt").read_text()


def test_more_processes_than_batches_is_refused(tmp_path):
    proc = subprocess.run(_torchrun(2, *_evaluate(tmp_path, n=8)), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "world size 2 is larger than the data" in proc.stderr + proc.stdout


def test_two_rank_runs_exit_cleanly_every_time(tmp_path):
    """The process group is destroyed at exit: before, 5 of 15 good two-rank runs aborted
    ("terminate called without an active exception", SIGABRT) after writing report.json."""
    cheap = ["-m", "robustx", "evaluate", "--model", "digits", "-n", "16", "--metrics", "CA,AA_W", "--batch-size", "4",
             "--no-progress", "--out"]
    subprocess.run([sys.executable, *cheap, str(tmp_path / "single")], check=True, env=ENV, capture_output=True,
                   timeout=300)
    expected = _values(tmp_path / "single")
    for run in range(5):
        out = tmp_path / f"two{run}"
        proc = subprocess.run(_torchrun(2, *cheap, str(out)), env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, f"run {run}: {proc.stderr[-2000:]}"
        # the ranks compute the same 4-input batches as one process; tolerance: one of the 16 inputs
        # whose two top logits tie within rounding could flip (none does in practice)
        assert _values(out) == pytest.approx(expected, abs=1 / 16)
