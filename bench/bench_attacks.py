"""Attacks: accuracy / distortion / time against foolbox 3.3.4, and the AISafety README table.

    python3 bench/bench_attacks.py [--threads 1] [--skip-cifar]

Part 1 (needs ../shared/data/aisafety-cifar10): clean accuracy and accuracy under PGD L-inf
eps 8/255, 10 steps of 2/255, random start, of the three ResNet-20 weight files on the 100
CIFAR-10 images (the README lists 0.99/0.00, 0.28/0.11, 1.00/0.04).
Part 2: robustx vs foolbox on the digits CNN and all 359 test digits, same hyperparameters:
accuracy under attack (FGSM, PGD) or median L2 of the successful examples (DeepFool, C&W),
and wall time of each in this run (ratio = foolbox / robustx).
"""
from __future__ import annotations

import argparse
import time

import foolbox as fb
import torch

from robustx import attacks
from robustx.data import aisafety_cifar10, aisafety_dir, digits
from robustx.models import digits_cnn, resnet20_cifar


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cifar_table() -> None:
    x, y = aisafety_cifar10()
    print("| weights | clean acc | PGD acc | PGD time (s) |\n| --- | --- | --- | --- |")
    for name in ("resnet20_cifar.pt", "CIFAR10_PAT_enhanced.pt", "CIFAR10_RAND_enhanced.pt"):
        model = resnet20_cifar(aisafety_dir() / name)
        adv, sec = timed(lambda: attacks.pgd(model, x, y, 8 / 255, steps=10, step_size=2 / 255, seed=0,
                                             progress=False))
        print(f"| {name} | {accuracy(model, x, y):.2f} | {accuracy(model, adv, y):.2f} | {sec:.1f} |")


def summary(model, x, y, adv) -> str:
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    dist = (adv - x).flatten(1).norm(dim=1)[fooled]
    median = dist.median().item() if fooled.any() else float("nan")
    return f"acc {1 - fooled.double().mean().item():.3f}, median L2 {median:.3f}"


def digits_table() -> None:
    model = digits_cnn()
    x, y = digits("test")
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    cases = [
        ("FGSM Linf eps 0.1", lambda: attacks.fgsm(model, x, y, 0.1),
         lambda: fb.attacks.FGSM()(fmodel, x, y, epsilons=0.1)[1]),
        ("PGD Linf eps 0.1, 20 steps", lambda: attacks.pgd(model, x, y, 0.1, steps=20, progress=False),
         lambda: fb.attacks.LinfPGD(steps=20, abs_stepsize=2.5 * 0.1 / 20)(fmodel, x, y, epsilons=0.1)[1]),
        ("PGD L2 eps 1, 20 steps", lambda: attacks.pgd(model, x, y, 1.0, norm=2, steps=20, progress=False),
         lambda: fb.attacks.L2PGD(steps=20, abs_stepsize=2.5 / 20)(fmodel, x, y, epsilons=1.0)[1]),
        ("DeepFool L2, 50 steps", lambda: attacks.deepfool(model, x, clip_values=(0, 1), progress=False),
         lambda: fb.attacks.L2DeepFoolAttack()(fmodel, x, y, epsilons=None)[1]),
        ("C&W L2, 5 x 100 steps, lr 0.05, c0 0.1",
         lambda: attacks.carlini_wagner_l2(model, x, y, binary_steps=5, steps=100, lr=0.05, c_init=0.1,
                                            progress=False),
         lambda: fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=100, stepsize=0.05,
                                                  initial_const=0.1)(fmodel, x, y, epsilons=None)[1]),
    ]
    print(f"\ndigits CNN, {x.shape[0]} test digits, clean acc {accuracy(model, x, y):.3f}")
    print("| attack | robustx | foolbox | robustx s | foolbox s | ratio |\n| --- | --- | --- | --- | --- | --- |")
    for name, ours_fn, theirs_fn in cases:
        ours, t_ours = timed(ours_fn)
        theirs, t_theirs = timed(theirs_fn)
        print(f"| {name} | {summary(model, x, y, ours)} | {summary(model, x, y, theirs)} | "
              f"{t_ours:.2f} | {t_theirs:.2f} | {t_theirs / t_ours:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_cifar:
        cifar_table()
    digits_table()


if __name__ == "__main__":
    main()
