"""Do the means over S rank the three real CIFAR-10 ResNet-20s (natural, PAT, RAND)?

``robustx.evaluate`` with its defaults (PGD L-inf 8/255 for AA_W; DeepFool, the minimal
attack, for ALD_0/2/inf, ASS, PSD, ACAC, ACTC, NTE) on the 100 AISafety images, one run
folder per model, then :func:`robustx.pipeline.report.common_set`: the same means over the
inputs every model got right and every model's DeepFool fooled. ``--cw``: then, as a check
of DeepFool's distances, C&W L2 (5 binary steps of at most 100 Adam steps, a cheap
setting) on the common set, its mean L2 and L-inf distances over the inputs it fools.
``--robustness``: also the model-oriented metrics (NS, NU, DIV, EBD, eps-ENI, eps-ENI_noise,
at the quick preset), each model's rank by each, against the papers' trend (the adversarially
trained model most robust). Prints markdown tables:

    python3 bench/exp_ranking_cifar.py [--root ../shared/data/aisafety-cifar10] [--out out/ranking] [--cw] [--robustness]
"""
import math
import argparse
import time
from pathlib import Path

import torch

from robustx import metrics
from robustx.attacks import carlini_wagner_l2
from robustx.data import aisafety_cifar10, aisafety_dir
from robustx.models import resnet20_cifar
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.report import common_set

MODELS = {"natural": "resnet20_cifar.pt", "PAT": "CIFAR10_PAT_enhanced.pt", "RAND": "CIFAR10_RAND_enhanced.pt"}
MEANS = ["ALD_0", "ALD_2", "ALD_inf", "ASS", "PSD", "ACAC", "ACTC", "NTE"]
CW = {"cw": {"binary_steps": 5, "steps": 100}}
ROBUSTNESS = ["NS", "NU", "DIV", "EBD", "eps-ENI", "eps-ENI_noise"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--out", default="out/ranking")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cw", action="store_true", help="C&W L2 (%s) on the common set too" % CW["cw"])
    parser.add_argument("--robustness", action="store_true", help="also " + ", ".join(ROBUSTNESS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = aisafety_dir(args.root)
    x, y = aisafety_cifar10(root)
    reports, seconds = {}, {}
    for name, weights in MODELS.items():
        start = time.perf_counter()
        reports[name] = evaluate(resnet20_cifar(root / weights), (x, y), metrics=["CA", "AA_W", *MEANS, *(ROBUSTNESS if args.robustness else [])],
                                 batch_size=100, out=Path(args.out) / name, resume=True, progress=False, name=name)
        seconds[name] = time.perf_counter() - start
    common = common_set(list(reports.values()), list(reports))
    n_common = common["ALD_2"][0]
    print(f"{x.shape[0]} AISafety CIFAR-10 images; AA_W: PGD L-inf 8/255, 10 x 2/255; means over S: DeepFool "
          "(L2, 50 steps, overshoot 0.02, 10 candidates); common set: right and fooled for all three models")
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
    for clock in ("attack pgd", "attack deepfool"):
        cells = [f"{r.run['attack_seconds'][clock]:.1f}" if clock in r.run["attack_seconds"] else "- (resumed)"
                 for r in reports.values()]
        print(f"| {clock} | " + " | ".join(cells) + " |")
    print("| whole run | " + " | ".join(f"{seconds[n]:.1f}" for n in MODELS) + " |")
    if args.robustness:
        robustness_table(reports)
    if args.cw:
        cw_check(reports, x, y, root)


def robustness_table(reports) -> None:
    """Each model-oriented metric per model, and the models ordered most robust first by it."""
    print()
    print("| metric | better | " + " | ".join(MODELS) + " | most robust first | seconds |")
    print("| --- | --- |" + " --- |" * len(MODELS) + " --- | --- |")
    for row in ["AA_W", *ROBUSTNESS]:
        values = {n: r.metrics[row].value for n, r in reports.items()}
        higher = metrics.get(row).higher_is_better
        order = sorted(values, key=lambda n: -values[n] if higher else values[n])
        took = sum(r.metrics[row].seconds for r in reports.values())
        print(f"| {row} | {metrics.get(row).direction} | " + " | ".join(f"{v:.4g}" for v in values.values())
              + f" | {' > '.join(order)} | {took:.1f} |")


def cw_check(reports, x, y, root) -> None:
    """C&W L2 on the common set: per model its successes and mean L2 / L-inf distance over
    them, beside DeepFool's over the same inputs."""
    columns = [r.metrics["ALD_2"].per_sample for r in reports.values()]
    common = [i for i in range(x.shape[0]) if all(not math.isnan(c[i]) for c in columns)]
    print()
    print(f"C&W L2 {CW['cw']} on the {len(common)} inputs of the common set:")
    print()
    print("| model | C&W fooled | C&W ALD_2 | DeepFool ALD_2 | C&W ALD_inf | DeepFool ALD_inf | C&W seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    xs, ys = x[common], y[common]
    for name, report in reports.items():
        net = resnet20_cifar(root / MODELS[name])
        start = time.perf_counter()
        x_cw = carlini_wagner_l2(net, xs, ys, **CW["cw"], progress=False)
        took = time.perf_counter() - start
        with torch.no_grad():
            s = metrics.success_mask(net(xs), net(x_cw), ys)
        deepfool = {p: [report.metrics[f"ALD_{p}"].per_sample[i] for i, ok in zip(common, s) if ok]
                    for p in ("2", "inf")}
        print(f"| {name} | {int(s.sum())} / {len(common)} | {metrics.ald(xs, x_cw, s, 2):.4f} | "
              f"{sum(deepfool['2']) / len(deepfool['2']):.4f} | {metrics.ald(xs, x_cw, s, 'inf'):.4f} | "
              f"{sum(deepfool['inf']) / len(deepfool['inf']):.4f} | {took:.1f} |")


if __name__ == "__main__":
    main()
