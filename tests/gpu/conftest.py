"""tests/gpu: the CUDA kernels of robustx._C against the CPU references; skipped without CUDA."""
import pytest
import torch

from robustx import ops

OPS = ("ball_sample", "grad_norm_batch_max", "coverage_update")


@pytest.fixture(autouse=True)
def _cuda_kernels():
    """Skip where there is no GPU; where there is one, the CUDA kernels must be built."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    missing = [op for op in OPS if not (ops.compiled() and torch._C._dispatch_has_kernel_for_dispatch_key(f"robustx::{op}", "CUDA"))]
    if missing:
        pytest.fail(
            f"CUDA is available but robustx._C has no CUDA kernel for {', '.join(missing)}: build it with "
            "`ROBUSTX_CUDA=1 pip install --no-build-isolation -e .`"
        )
