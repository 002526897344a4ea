"""The build: every op has the kernels its build promises; the CPU-only build still works.

``make test`` sets ROBUSTX_EXPECT_CUDA=1 when it built the CUDA kernels (nvcc found), so
a build that silently dropped them fails here even on a machine without a GPU.
"""
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustx import ops
from robustx.ops import kernels

ROOT = Path(__file__).resolve().parents[1]


def test_every_op_has_the_kernels_the_build_promises(requires_compiled):
    required = ["CPU"] + (["CUDA"] if os.environ.get("ROBUSTX_EXPECT_CUDA") == "1" else [])
    assert kernels.missing(required) == []
    assert set(kernels.backends()) == set(kernels.OPS)


def test_cuda_kernels_come_with_a_cuda_torch_and_nvcc(requires_compiled):
    if os.environ.get("ROBUSTX_EXPECT_CUDA") != "1":
        pytest.skip("this build was made without nvcc (ROBUSTX_EXPECT_CUDA is not 1)")
    assert torch.version.cuda is not None, "a CUDA build needs a CUDA torch"
    assert all("CUDA" in keys for keys in kernels.backends().values())


def test_missing_names_each_op_without_the_library():
    with ops.reference_ops():
        assert kernels.missing(["CPU"]) == [f"{op}: CPU" for op in kernels.OPS]
    with pytest.raises(ValueError, match="required backend"):
        kernels.missing(["TPU"])


def test_the_cpu_only_build_has_cpu_kernels_only_and_matches_the_reference(tmp_path):
    """ROBUSTX_CUDA=0 (users without nvcc): setup.py builds the CPU kernels alone."""
    env = {**os.environ, "ROBUSTX_CUDA": "0"}
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    (library,) = glob.glob(str(tmp_path / "robustx" / "_C*.so"))
    probe = """
import torch, robustx
from robustx import ops
from robustx.ops import kernels
assert ops.source() == __import__("os").environ["ROBUSTX_OPS_LIBRARY"], ops.source()
assert kernels.backends() == {op: ["CPU"] for op in kernels.OPS}, kernels.backends()
c = torch.rand(3, 5, dtype=torch.float64)
got = ops.ball_sample(c, 7, 0.5, 2, seed=11)
with ops.reference_ops():
    want = ops.ball_sample(c, 7, 0.5, 2, seed=11)
torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**env, "ROBUSTX_OPS_LIBRARY": library},
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
