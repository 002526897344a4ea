"""AutoAttack (pyautoattack, the authors' code) against robustx's PGD on the three AISafety
CIFAR-10 ResNet-20s: robust accuracy and seconds, side by side.

    python3 bench/bench_autoattack.py [--n 100] [--threads 2] [--version standard] [--attacks apgd-ce,apgd-t]

L-inf eps 8/255 on the first N of the 100 AISafety images (inputs in [0, 1]). PGD is
robustx.evaluate's default (10 steps of 2/255, random start, seed 0); AutoAttack runs
``--version`` (``custom`` with ``--attacks``), seed 0, batch 100. For each model the two
attacks run one after the other (PGD first), so their times share the machine's load.
AutoAttack's per-attack progress (robust accuracy after each of its attacks) goes to
stderr. Prints a Markdown table.
"""
import argparse
import logging
import sys

import torch

from bench_attacks import accuracy, timed
from robustx.attacks import pgd
from robustx.autoattack import autoattack
from robustx.data import aisafety_cifar10, aisafety_dir
from robustx.models import resnet20_cifar

MODELS = {"standard": "resnet20_cifar.pt", "PAT": "CIFAR10_PAT_enhanced.pt", "RAND": "CIFAR10_RAND_enhanced.pt"}
EPS = 8 / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--version", default="standard")
    ap.add_argument("--attacks", default=None, help="comma-separated AutoAttack attacks (with --version custom)")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s")
    logging.getLogger("auto-attack").setLevel(logging.DEBUG)
    x, y = aisafety_cifar10()
    x, y = x[:args.n].float(), y[:args.n]
    attacks = args.attacks.split(",") if args.attacks else None
    rows = ["| model | clean | PGD-10 robust acc | PGD s | AutoAttack robust acc | AutoAttack s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name in args.models.split(","):
        model = resnet20_cifar(aisafety_dir() / MODELS[name])
        x_pgd, t_pgd = timed(lambda: pgd(model, x, y, eps=EPS, steps=10, step_size=2 / 255, seed=0, progress=False))
        print(f"{name}: PGD done in {t_pgd:.1f} s", file=sys.stderr, flush=True)
        x_aa, t_aa = timed(lambda: autoattack(model, x, y, eps=EPS, version=args.version, attacks=attacks, seed=0,
                                              batch_size=100))
        rows.append(f"| {name} | {accuracy(model, x, y):.2f} | {accuracy(model, x_pgd, y):.2f} | {t_pgd:.1f} | "
                    f"{accuracy(model, x_aa, y):.2f} | {t_aa:.1f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
