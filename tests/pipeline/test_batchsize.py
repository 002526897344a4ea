"""--batch-size auto: the largest power of two whose activations fit the memory budget."""
import torch

from robustx.modelutil import activation_bytes
from robustx.pipeline.batchsize import auto_batch_size
from toy_models import wide_cnn


def test_auto_batch_size_fits_the_budget_and_shrinks_for_bigger_models():
    x = torch.rand(1, 3, 32, 32)
    sizes = {}
    for width in (4, 64):
        net = wide_cnn(width)
        size = auto_batch_size(net, x, budget=16 << 20)
        per_input = activation_bytes(net, torch.cat([x, x])) - activation_bytes(net, x)
        assert size & (size - 1) == 0 and size * per_input <= 16 << 20 < 2 * size * per_input
        sizes[width] = size
    assert sizes[64] < sizes[4]
    assert auto_batch_size(wide_cnn(4), x) == 1024  # 1 GiB on a CPU, capped
