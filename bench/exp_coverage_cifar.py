"""Neuron coverage of the three real CIFAR-10 ResNet-20 models (AISafety platform weights).

Profile on the first ``--profile`` of the 100 images (5 per class), assess on the rest,
clean and under PGD L-inf (eps 8/255, 10 steps of 2/255, random start; adversarial
examples of each model against itself). Prints a markdown table; ``--append`` adds it to
bench/RESULTS.md with the command.

    python3 bench/exp_coverage_cifar.py --append
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robustx import attacks, data, models
from robustx.coverage import NeuronCoverage

ROOT = Path(__file__).resolve().parents[1]

WEIGHTS = ("resnet20_cifar.pt", "CIFAR10_PAT_enhanced.pt", "CIFAR10_RAND_enhanced.pt")
COLUMNS = ("NC", "KMNC", "NBC", "SNAC", "TKNC", "TKNP")


def stratified_split(y: torch.Tensor, per_class: int):
    """First ``per_class`` images of each class for the profile, the rest for assessment."""
    prof = torch.zeros_like(y, dtype=torch.bool)
    for c in y.unique():
        prof[(y == c).nonzero().flatten()[:per_class]] = True
    return prof.nonzero().flatten(), (~prof).nonzero().flatten()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="AISafety folder (default: ../shared/data/aisafety-cifar10)")
    ap.add_argument("--per-class", type=int, default=5, help="profile images per class")
    ap.add_argument("--sections", type=int, default=10, help="KMNC sections (its k)")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--position", default="post", choices=("pre", "post"))
    ap.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    x, y = data.aisafety_cifar10(args.root)
    prof_idx, test_idx = stratified_split(y, args.per_class)
    folder = data.aisafety_dir(args.root)
    settings = dict(sections=args.sections, top_k=args.top_k, threshold=args.threshold, position=args.position)
    rows = []
    for weights in WEIGHTS:
        model = models.resnet20_cifar(folder / weights)
        x_test, y_test = x[test_idx], y[test_idx]
        t0 = time.perf_counter()
        x_adv = attacks.pgd(model, x_test, y_test, 8 / 255, norm="inf", steps=10, step_size=2 / 255, seed=0)
        t_attack = time.perf_counter() - t0
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            acc_adv = (model(x_adv).argmax(1) == y_test).float().mean().item()
        cov = NeuronCoverage(model, **settings)
        cov.profile(x[prof_idx])
        profile = cov.state_dict()
        clean = cov.assess(x_test)
        adv = NeuronCoverage(model, **settings)
        adv = adv.load_state_dict(profile, coverage=False).assess(x_adv)
        both = cov.update(x_adv).result()
        for name, r, a in (("clean", clean, acc), ("PGD", adv, acc_adv), ("clean+PGD", both, None)):
            rows.append((weights, name, a, r))
        print(f"{weights}: attack {t_attack:.1f} s", file=sys.stderr)

    n_prof, n_test = len(prof_idx), len(test_idx)
    lines = [
        f"| weights | inputs | accuracy | {' | '.join(COLUMNS)} |",
        "|" + " --- |" * (3 + len(COLUMNS)),
    ]
    for weights, name, acc, r in rows:
        vals = [f"{getattr(r, c):.3f}" if c != "TKNP" else str(r.TKNP) for c in COLUMNS]
        acc_s = "-" if acc is None else f"{acc:.2f}"
        lines.append(f"| {weights} | {name} ({r.inputs}) | {acc_s} | {' | '.join(vals)} |")
    neurons = rows[0][3].neurons
    table = "\n".join(lines)
    print(table)
    if args.append:
        cmd = "python3 bench/exp_coverage_cifar.py " + " ".join(sys.argv[1:])
        text = (
            f"\n## Neuron coverage of the CIFAR-10 ResNet-20 models (bench/exp_coverage_cifar.py)\n\n"
            f"Command: `{cmd.strip()}` (torch {torch.__version__}, CPU, compiled ops: "
            f"{__import__('robustx').ops.compiled()}).\n"
            f"Profile: {n_prof} of the 100 AISafety images ({args.per_class} per class); assessed: the other "
            f"{n_test}, clean and PGD L-inf eps 8/255 (10 x 2/255, random start, seed 0) against the same model. "
            f"Layers: every Conv/Linear output ({args.position}-activation), {neurons} channel neurons; "
            f"sections={args.sections}, top_k={args.top_k}, NC threshold {args.threshold}. Higher = the inputs "
            f"exercise more of the model; clean+PGD = both sets counted together (TKNP distinct patterns).\n\n{table}\n"
        )
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
