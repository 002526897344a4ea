"""robustx.metrics on the three real CIFAR-10 ResNet-20s of ../shared/data/aisafety-cifar10.

For each model: CA, white-box PGD L-inf (eps 8/255, 10 steps of 2/255, random start)
adversarial examples and their metrics over the successful set S (ALD, ASS, PSD, ACAC,
ACTC, NTE, RGB = blur sigma 0.5, RIC = JPEG 90); AA_B of the PAT and RAND models on PGD
examples made against the natural model (surrogate); the defense utility of PAT and RAND
against the natural model. Prints markdown tables:

    python3 bench/exp_metrics_cifar.py [--root ../shared/data/aisafety-cifar10]
"""
import argparse
import functools
import time

import torch


from robustx import metrics
from robustx.attacks import pgd
from robustx.data import aisafety_cifar10, aisafety_dir
from robustx.models import resnet20_cifar

MODELS = {"natural": "resnet20_cifar.pt", "PAT": "CIFAR10_PAT_enhanced.pt", "RAND": "CIFAR10_RAND_enhanced.pt"}
ROWS = ["CA", "AA_W", "|S|", "ALD_0", "ALD_2", "ALD_inf", "ASS", "PSD", "ACAC", "ACTC", "NTE", "RGB", "RIC", "AA_B"]


def logits_of(model, x):
    with torch.no_grad():
        return model(x)


def white_box(model, x, y, attack):
    """Every metric of one model under its own white-box examples."""
    clean = logits_of(model, x)
    x_adv = attack(model, x, y)
    adv = logits_of(model, x_adv)
    s = metrics.success_mask(clean, adv, y)
    return {
        "CA": metrics.accuracy(clean, y), "AA_W": metrics.accuracy(adv, y), "|S|": int(s.sum()),
        "ALD_0": metrics.ald(x, x_adv, s, 0), "ALD_2": metrics.ald(x, x_adv, s, 2),
        "ALD_inf": metrics.ald(x, x_adv, s, "inf"), "ASS": metrics.ass(x, x_adv, s), "PSD": metrics.psd(x, x_adv, s),
        "ACAC": metrics.acac(adv, s), "ACTC": metrics.actc(adv, y, s), "NTE": metrics.nte(adv, s),
        "RGB": metrics.rgb(logits_of(model, metrics.gaussian_blur_8bit(x_adv)), y, s),
        "RIC": metrics.ric(logits_of(model, metrics.jpeg_8bit(x_adv)), y, s),
    }


def cell(v) -> str:
    return str(v) if isinstance(v, int) else ("-" if v is None else f"{v:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    root = aisafety_dir(args.root)
    x, y = aisafety_cifar10(root)
    models = {name: resnet20_cifar(root / f) for name, f in MODELS.items()}
    attack = functools.partial(pgd, eps=8 / 255, steps=10, step_size=2 / 255, seed=0)

    results = {name: white_box(m, x, y, attack) for name, m in models.items()}
    transferred = metrics.transfer_examples(attack, models["natural"], x, y)
    for name in ("PAT", "RAND"):
        results[name]["AA_B"] = metrics.accuracy(logits_of(models[name], transferred), y)
    print("100 AISafety CIFAR-10 images; PGD L-inf eps 8/255, 10 x 2/255, random start (seed 0); "
          "AA_B: PGD examples of the natural model (surrogate)")
    print()
    print("| metric | better | " + " | ".join(MODELS) + " |")
    print("| --- | --- |" + " --- |" * len(MODELS))
    for row in ROWS:
        better = "" if row == "|S|" else metrics.get(row).direction
        print(f"| {row} | {better} | " + " | ".join(cell(results[n].get(row)) for n in MODELS) + " |")

    print()
    print("Defense utility against the natural model (clean inputs):")
    print()
    print("| metric | better | PAT | RAND |")
    print("| --- | --- | --- | --- |")
    original = logits_of(models["natural"], x)
    utility = {n: metrics.defense_utility(original, logits_of(models[n], x), y) for n in ("PAT", "RAND")}
    for key in ("CAV", "CRR", "CSR", "CCV", "COS"):
        better = metrics.get(key).direction
        print(f"| {key} | {better} | {cell(utility['PAT'][key])} | {cell(utility['RAND'][key])} |")
    print()
    print(f"Total time: {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
