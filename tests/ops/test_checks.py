"""The shared C++ argument checks (csrc/include/robustx/<op>_checks.h) on direct torch.ops
calls: they run before any kernel, so a bad index never reaches memory; and where the row
checks of grad_norm_batch_max run (on the host for CPU indices, never by reading a device's
values). (The device checks need a GPU: tests/gpu and tests/ops/test_kernel_sim.py cover them.)"""
import pytest
import torch

from robustx import ops

pytestmark = pytest.mark.skipif(not ops.compiled(), reason="checks of the compiled operators")


@pytest.mark.parametrize("row", [3, -1, 2**40], ids=["too large", "negative", "huge"])
def test_grad_norm_rejects_rows_outside_jac(row):
    jac = torch.randn(2, 2, 3, 4)
    good = torch.tensor([[0, 1], [2, 0]])
    with pytest.raises(RuntimeError, match=r"targets holds a row index outside \[0, 3\)"):
        torch.ops.robustx.grad_norm_batch_max(jac, None, torch.tensor([[0, 1], [row, 0]]), 2.0, 1, False)
    with pytest.raises(RuntimeError, match=r"source holds a row index outside \[0, 3\)"):
        torch.ops.robustx.grad_norm_batch_max(jac, torch.tensor([0, row]), good, 2.0, 1, False)
    maxima, _ = torch.ops.robustx.grad_norm_batch_max(jac, torch.tensor([0, 2]), good, 2.0, 1, False)
    assert torch.isfinite(maxima).all()


def test_grad_norm_row_checks_run_on_the_host_and_never_read_device_values():
    """CPU rows are checked on the host, by the wrapper (ValueError) whatever jac's device; rows
    on another device are never read (reading them would wait for a GPU). The meta device
    stands in for the GPU: its tensors have no values, so reading one raises."""
    meta_jac = torch.randn(2, 4, 3, 5).to("meta")
    with pytest.raises(ValueError, match=r"targets must index rows in \[0, K=3\)"):
        ops.grad_norm_batch_max(meta_jac, torch.tensor([[0, 3], [1, 2]]), q=2, batch_size=2)
    with pytest.raises(ValueError, match=r"source must index rows in \[0, K=3\)"):
        ops.grad_norm_batch_max(meta_jac, torch.tensor([[0, 1], [1, 2]]), q=2, batch_size=2, source=torch.tensor([-1, 0]))
    device_rows = torch.empty(2, 2, dtype=torch.long, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        int(device_rows.max())  # what the wrapper used to do
    maxima, norms = ops.grad_norm_batch_max(meta_jac, device_rows, q=1, batch_size=2, return_norms=True,
                                            source=torch.empty(2, dtype=torch.int32, device="meta"))
    assert maxima.shape == (2, 2, 2) and norms.shape == (2, 2, 4) and maxima.device.type == "meta"


def test_ball_sample_rejects_an_offset_that_overflows():
    centers = torch.rand(1, 4)
    with pytest.raises(RuntimeError, match=r"offset \+ n must fit in int64"):
        torch.ops.robustx.ball_sample(centers, 5, 0.5, 2.0, None, None, 0, 2**63 - 3)
    last = torch.ops.robustx.ball_sample(centers, 3, 0.5, 2.0, None, None, 0, 2**63 - 4)  # ends at 2^63 - 1
    assert last.shape == (1, 3, 4) and torch.isfinite(last).all()
