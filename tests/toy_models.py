"""Small models shared by the tests (float64 linear models with seeded weights, tiny CNNs,
and the RGB CNNs of the image-folder tests)."""
import math

import torch
from torch import nn


def linear_model(classes: int, shape=(1, 4, 4), seed: int = 0) -> nn.Module:
    """Flatten + Linear(prod(shape), classes) in float64 with seeded Gaussian weights."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(math.prod(shape), classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64))
        lin.bias.copy_(torch.randn(classes, generator=gen, dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), lin)


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv-ReLU-Linear-ReLU-Linear on (N, 1, 4, 4) inputs, 5 classes, seeded (float32)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5)
    )


def scripted_digits_cnn() -> nn.Module:
    """The built-in digits CNN compiled with TorchScript: it runs and has gradients, but
    coverage cannot find (hook) its layers, so the coverage metrics fail on it."""
    import warnings

    from robustx.models import digits_cnn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        return torch.jit.script(digits_cnn())


def model_and_data_files(folder, net: nn.Module, x: torch.Tensor, y, name: str = "model"):
    """``net`` traced with TorchScript to ``folder/<name>.pt`` and (x, y) saved to
    ``folder/<name>.npz``, the files the commands' --model and --data read; their paths."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still read by robustx
        torch.jit.save(torch.jit.trace(net, x[:2]), folder / f"{name}.pt")
    np.savez(folder / f"{name}.npz", x=x.numpy(), y=np.asarray(y))
    return folder / f"{name}.pt", folder / f"{name}.npz"


def colour_cnn() -> nn.Module:
    """A factory for --model: 1x1 conv (identity) + ReLU, global mean, identity Linear:
    the predicted class is the image's brightest mean channel (R -> 0, G -> 1, B -> 2)."""
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        for layer in (net[0], net[4]):
            layer.weight.copy_(torch.eye(3).view_as(layer.weight))
            layer.bias.zero_()
    return net


def wide_cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))
