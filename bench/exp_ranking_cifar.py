"""Do the means over S rank the three real CIFAR-10 ResNet-20s (natural, PAT, RAND)?

``robustx.evaluate`` with its defaults (PGD L-inf 8/255 for AA_W; DeepFool, the minimal
attack, for ALD_0/2/inf, ASS, PSD, ACAC, ACTC, NTE) on the 100 AISafety images, one run
folder per model, then :func:`robustx.pipeline.report.common_set`: the same means over the
inputs every model got right and every model's DeepFool fooled. ``--cw``: C&W L2 (5 binary
steps of at most 100 Adam steps, a cheap setting) as the minimal attack instead, a check of
DeepFool's distances. Prints markdown tables:

    python3 bench/exp_ranking_cifar.py [--root ../shared/data/aisafety-cifar10] [--out out/ranking] [--cw]
"""
import argparse
import time
from pathlib import Path

import torch

from robustx import metrics
from robustx.data import aisafety_cifar10, aisafety_dir
from robustx.models import resnet20_cifar
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.report import common_set

MODELS = {"natural": "resnet20_cifar.pt", "PAT": "CIFAR10_PAT_enhanced.pt", "RAND": "CIFAR10_RAND_enhanced.pt"}
MEANS = ["ALD_0", "ALD_2", "ALD_inf", "ASS", "PSD", "ACAC", "ACTC", "NTE"]
CW = {"cw": {"binary_steps": 5, "steps": 100}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--out", default="out/ranking")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cw", action="store_true", help="C&W L2 as the minimal attack (%s)" % CW["cw"])
    args = parser.parse_args()
    minimal = CW if args.cw else "deepfool"
    torch.set_num_threads(args.threads)
    root = aisafety_dir(args.root)
    x, y = aisafety_cifar10(root)
    reports, seconds = {}, {}
    for name, weights in MODELS.items():
        start = time.perf_counter()
        reports[name] = evaluate(resnet20_cifar(root / weights), (x, y), metrics=["CA", "AA_W", *MEANS],
                                 minimal_attack=minimal, batch_size=100, out=Path(args.out) / name, resume=True, progress=False, name=name)
        seconds[name] = time.perf_counter() - start
    common = common_set(list(reports.values()), list(reports))
    n_common = common["ALD_2"][0]
    what = f"C&W L2 {CW['cw']}" if args.cw else "DeepFool (L2, 50 steps, overshoot 0.02, 10 candidates)"
    print(f"{x.shape[0]} AISafety CIFAR-10 images; AA_W: PGD L-inf 8/255, 10 x 2/255; means over S: {what}; "
          "common set: right and fooled for all three models")
    print()
    print("| metric | better | " + " | ".join(MODELS) + " | " + " | ".join(f"{n} (common)" for n in MODELS) + " |")
    print("| --- | --- |" + " --- |" * (2 * len(MODELS)))
    for row in ["CA", "AA_W", "|S|", *MEANS]:
        if row == "|S|":
            cells = [str(r.metrics["ALD_2"].settings["successful"]) for r in reports.values()] + [str(n_common)] * 3
            print("| |S| | | " + " | ".join(cells) + " |")
            continue
        cells = [f"{r.metrics[row].value:.4f}" for r in reports.values()]
        cells += [f"{v:.4f}" for v in common[row][1]] if row in common else ["-"] * 3
        print(f"| {row} | {metrics.get(row).direction} | " + " | ".join(cells) + " |")
    print()
    print("| seconds | " + " | ".join(MODELS) + " |")
    print("| --- |" + " --- |" * len(MODELS))
    for clock in ("attack pgd", "attack cw" if args.cw else "attack deepfool"):
        print(f"| {clock} | " + " | ".join(f"{r.run['attack_seconds'][clock]:.1f}" for r in reports.values()) + " |")
    print("| whole run | " + " | ".join(f"{seconds[n]:.1f}" for n in MODELS) + " |")


if __name__ == "__main__":
    main()
