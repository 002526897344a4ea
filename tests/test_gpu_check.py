"""bench/gpu_check.sh --dry-run: every step runs on the CPU at tiny sizes and one markdown
report names the CPU and holds every section with its command and status."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("Build with CUDA kernels", "Tests", "Operators against the bandwidth floor",
            "ResNet-50: CLEVER and coverage against forward/backward", "ART drop-in against ART on the CIFAR ResNet-20")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.md"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, "ROBUSTX_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out.read_text()


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
    assert "--step ops --dry-run" in report and "tests/test_kernel_sim.py" in report
    assert "tests/gpu" not in report.split("## Tests")[1].split("## ")[0]
    for op in ("ball_sample", "grad_norm_batch_max", "coverage_update"):
        row = re.search(rf"^\| {op} \|.*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$", report, re.M)
        assert row and float(row[1]) > 0 and float(row[2]) > 0
    assert re.search(r"CLEVER / floor.*\n.*\n\| [\d.]+ \| [\d.]+ \| [\d.]+ \|", report)


def test_art_drop_in_matches_art(report):
    pytest.importorskip("art")
    if "Skipped:" in report.split("## ART drop-in")[1]:
        pytest.skip("AISafety CIFAR-10 files absent")
    art = re.search(r"^\| 0 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| (\S+) \| (\S+) \| (\S+) \|$", report, re.M)
    assert art and float(art[3]) < 1e-4  # the drop-in reproduces ART's score
