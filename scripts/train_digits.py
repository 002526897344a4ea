"""Train robustx's digits CNN and write robustx/weights/digits_cnn.pt (reproducible).

    python3 scripts/train_digits.py [--epochs 40] [--out robustx/weights/digits_cnn.pt]

Adam (lr 1e-3, batch 64, fixed seed 0, single thread) on robustx.data.digits("train");
prints the test accuracy on robustx.data.digits("test").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


from robustx.data import digits
from robustx.models import DIGITS_WEIGHTS, DigitsCNN


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def train(epochs: int, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    x, y = digits("train")
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(x.shape[0], generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  train acc {accuracy(model, x, y):.4f}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=DIGITS_WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # bitwise reproducible
    model = train(args.epochs)
    x_test, y_test = digits("test")
    print(f"test accuracy {accuracy(model, x_test, y_test):.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
