"""bench/gpu_check.sh --dry-run: every step runs on the CPU at tiny sizes and one markdown
report names the CPU and holds every section with its command and status; the real run's
plan (one GPU architecture, tests/gpu with a SIGINT timeout, per-step timeouts within one
8-minute call) is checked without a GPU."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

SECTIONS = ("Build with CUDA kernels", "Operators against the bandwidth floor", "Tests (tests/gpu)",
            "ResNet-50: CLEVER and coverage against forward/backward", "ART drop-in against ART on the CIFAR ResNet-20")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """$OUT of a dry run (no --out: the report goes there, with the step logs)."""
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=480,
                          env={**os.environ, "PYTHON": sys.executable, "ROBUSTX_NO_PROGRESS": "1", "OUT": str(out)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def report(out_dir):
    return (out_dir / "gpu_check.md").read_text()


def test_results_are_few_files_under_out(out_dir):
    files = sorted(p.name for p in out_dir.rglob("*") if p.is_file())
    assert len(files) <= gpu_check.MAX_FILES, files
    assert {"gpu_check.md", "ops.log", "tests.log", "tests.xml"} <= set(files)
    assert "passed" in (out_dir / "tests.log").read_text() or "skipped" in (out_dir / "tests.log").read_text()


def test_names_the_cpu(report):
    assert re.search(r"^Device: CPU \(.*dry run\), torch \S+", report, re.M)


def test_every_section_present_in_order(report):
    heads = re.findall(r"^## (.+)$", report, re.M)
    assert tuple(heads) == SECTIONS


def test_cuda_only_build_is_skipped_and_other_steps_pass(report):
    body = report.split("## Build with CUDA kernels")[1].split("## ")[0]
    assert "Skipped: CUDA only" in body
    statuses = re.findall(r"^Status: (.+?),", report, re.M)
    assert statuses == ["ok"] * 4, statuses


def test_each_step_records_its_command_and_numbers(report):
    assert report.count("Command: `") == 5  # the header and the four steps that ran
    assert "--step ops --dry-run" in report
    tests = report.split("## Tests")[1].split("## ")[0]
    assert "-rfE" in tests and "--durations=15" in tests and "tests/gpu" in tests and "kernel_sim" not in tests
    for op in ("ball_sample", "grad_norm_batch_max", "coverage_update"):
        row = re.search(rf"^\| {op} \|.*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$", report, re.M)
        # times in ms at 3 decimals: a dry run's tiny op may print 0.000 on a fast machine
        assert row and float(row[1]) > 0 and float(row[2]) >= 0
    assert re.search(r"CLEVER / floor.*\n.*\n\| [\d.]+ \| [\d.]+ \| [\d.]+ \|", report)


def test_real_plan_builds_for_this_gpu_only_and_fits_one_call(tmp_path):
    """On an H100 / H200 (sm_90): one architecture, CUDA_HOME found, no pip; op timings
    before the tests; the tests are tests/gpu only, with a SIGINT grace; the step timeouts
    fit the default budget, which leaves half a minute of an 8-minute call for the start."""
    steps = gpu_check.plan(False, tmp_path, (9, 0))
    assert tuple(title for title, *_ in steps) == SECTIONS
    _, _, build, env, _, _ = steps[0]
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["ROBUSTX_CUDA"] == "1"
    assert "setup.py -q build_ext --inplace" in build[-1] and "--require CUDA" in build[-1]
    assert not any("pip" in " ".join(argv) for _, _, argv, *_ in steps)
    _, _, tests, _, _, grace = steps[2]
    assert tests[-1] == "tests/gpu" and grace > 0 and f"--junitxml={tmp_path / 'tests.xml'}" in tests
    assert sum(timeout for *_, timeout, _ in steps) <= 450 <= 8 * 60 - 30
    assert gpu_check.arch_list((8, 6)) == "8.6"


def test_cuda_home_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_HOME", "/opt/some-cuda")
    assert gpu_check.cuda_home() == "/opt/some-cuda"


def test_a_step_over_its_timeout_gets_sigint_first_and_keeps_its_summary():
    """What pytest relies on to print its summary: SIGINT (KeyboardInterrupt) `grace` s before the kill."""
    code = "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('summary printed', flush=True)\n"
    status, out, _ = gpu_check.run_step([sys.executable, "-c", code], {}, timeout=4, grace=2)
    assert status == "TIMED OUT after 4 s (interrupted: SIGINT)" and "summary printed" in out
    status, out, _ = gpu_check.run_step([sys.executable, "-c", "import time; time.sleep(60)"], {}, timeout=2)
    assert status == "TIMED OUT after 2 s" and out == ""


def test_art_drop_in_matches_art(report):
    pytest.importorskip("art")
    if "Skipped:" in report.split("## ART drop-in")[1]:
        pytest.skip("AISafety CIFAR-10 files absent")
    art = re.search(r"^\| 0 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| (\S+) \| (\S+) \| (\S+) \|$", report, re.M)
    assert art and float(art[3]) < 1e-4  # the drop-in reproduces ART's score
