"""Train robustx's digits CNNs and write their weights to robustx/weights (reproducible bit for bit).

    python3 scripts/train_digits.py [--variant standard|seed1|pgd] [--epochs N] [--out PATH]

Recipes (Adam lr 1e-3, batch 64, single thread, on robustx.data.digits("train")):

* ``standard`` (digits_cnn.pt): 40 epochs of cross-entropy, seed 0 - the built-in model;
* ``seed1`` (digits_cnn_seed1.pt): the same recipe from seed 1 - an independently trained
  copy, the demo's surrogate for transferred attacks (AA_B) and its mCE baseline;
* ``pgd`` (digits_cnn_pgd.pt): 10 epochs of PGD adversarial training (Madry et al.; L-inf
  eps 0.1, 7 steps, random start, robustx.defenses.train_adversarial), seed 0 - the demo's
  defended model (CAV ... COS).

Prints the test accuracy on robustx.data.digits("test").
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from robustx.data import digits
from robustx.defenses import train_adversarial
from robustx.models import DIGITS_VARIANTS, DigitsCNN, digits_weights

RECIPES = {"standard": {"seed": 0, "epochs": 40}, "seed1": {"seed": 1, "epochs": 40},
           "pgd": {"seed": 0, "epochs": 10, "eps": 0.1, "steps": 7}}


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


def train_pgd(epochs: int, seed: int, eps: float, steps: int) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    history = train_adversarial(model, digits("train"), method="pgd", epochs=epochs, lr=1e-3, batch_size=64,
                                eps=eps, steps=steps, seed=seed, progress=False)
    for record in history:
        print(f"epoch {record['epoch'] + 1:3d}  loss {record['loss']:.4f}  adversarial train acc "
              f"{record['accuracy']:.4f}")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=tuple(DIGITS_VARIANTS), default="standard")
    parser.add_argument("--epochs", type=int, default=None, help="default: the variant's recipe")
    parser.add_argument("--out", type=Path, default=None, help="default: the variant's file in robustx/weights")
    args = parser.parse_args()
    recipe = {**RECIPES[args.variant], **({"epochs": args.epochs} if args.epochs is not None else {})}
    out = args.out or digits_weights(args.variant)
    torch.set_num_threads(1)  # bitwise reproducible
    model = train_pgd(**recipe) if args.variant == "pgd" else train(**recipe)
    x_test, y_test = digits("test")
    print(f"test accuracy {accuracy(model, x_test, y_test):.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
