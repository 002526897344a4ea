"""The shared C++ argument checks (csrc/include/robustx/checks.h) on direct torch.ops calls:
they run before any kernel, on every backend, so a bad index never reaches memory. (The
device checks need a second device: tests/gpu covers them.)"""
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


def test_ball_sample_rejects_an_offset_that_overflows():
    centers = torch.rand(1, 4)
    with pytest.raises(RuntimeError, match=r"offset \+ n must fit in int64"):
        torch.ops.robustx.ball_sample(centers, 5, 0.5, 2.0, None, None, 0, 2**63 - 3)
    last = torch.ops.robustx.ball_sample(centers, 3, 0.5, 2.0, None, None, 0, 2**63 - 4)  # ends at 2^63 - 1
    assert last.shape == (1, 3, 4) and torch.isfinite(last).all()
