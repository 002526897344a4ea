"""Validate robustx.clever (issue 3) and print a markdown section for bench/RESULTS.md.

(1) Linear models f(x) = Wx + b: CLEVER equals the exact distance to the decision
    boundary min_j (f_c - f_j)(x0) / ||w_c - w_j||_q (no clipping, R large).
(2) Digits CNN and the real CIFAR-10 ResNet-20 (../shared/data/aisafety-cifar10):
    on correctly classified images, how often untargeted CLEVER L2 lies below the
    smallest L2 distortion found by Carlini-Wagner L2 and DeepFool (CLEVER estimates a
    lower bound of the minimal distortion; Weng et al. report it a little above the
    attacks' distortion on a minority of images).
(3) Scaling the logits by a constant leaves the scores unchanged.

    python bench/validate_clever.py [--append bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn


from robustx import ops
from robustx.attacks import carlini_wagner_l2, deepfool
from robustx.clever import clever
from robustx.data import aisafety_cifar10, aisafety_dir, digits
from robustx.models import digits_cnn, resnet20_cifar


def linear_exactness(lines):
    lines += ["### (1) Linear models: CLEVER vs exact boundary distance", "",
              "5 random images per model, radius 1e3, no clipping, 10 x 32 samples per image.", "",
              "| input dim | classes | norm | max relative error |", "| --- | --- | --- | --- |"]
    worst = 0.0
    for d, k in ((64, 10), (3072, 10)):
        torch.manual_seed(d)
        model = nn.Sequential(nn.Flatten(), nn.Linear(d, k))
        x = torch.randn(5, d)
        w, b = model[1].weight.double(), model[1].bias.double()
        f = x.double() @ w.T + b
        c = f.argmax(1)
        for norm in (1, 2, math.inf):
            q = ops.dual_norm(norm)
            diff = w[c][:, None, :] - w[None, :, :]  # (N, K, D)
            dist = (f.gather(1, c[:, None]) - f) / torch.linalg.vector_norm(diff, ord=q, dim=2)
            exact = dist.scatter(1, c[:, None], math.inf).amin(1)
            res = clever(model, x, norm=norm, radius=1e3, n_batches=10, n_samples=32, clip_values=None, progress=False)
            err = float(((res.per_sample - exact).abs() / exact).max())
            worst = max(worst, err)
            lines.append(f"| {d} | {k} | {ops.parse_norm(norm):g} | {err:.2e} |")
    lines += ["", f"Worst relative error: {worst:.2e} (criterion: < 1e-2).", ""]


def distortion(model, x, x_adv, y):
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    d = (x_adv - x).flatten(1).norm(dim=1).double()
    return torch.where(fooled, d, torch.tensor(math.inf, dtype=torch.float64))


def correct_images(model, x, y, n, per_class=False):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    idx = ok.nonzero().squeeze(1)
    if per_class:
        firsts = {}
        for i in idx.tolist():
            firsts.setdefault(int(y[i]), i)
        idx = torch.tensor(sorted(firsts.values()))
    return x[idx[:n]], y[idx[:n]]


def versus_attacks(lines, name, model, x, y, clever_kw, cw_kw):
    t0 = time.perf_counter()
    res = clever(model, x, norm=2, clip_values=(0.0, 1.0), progress=True, **clever_kw)
    t_clever = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_cw = distortion(model, x, carlini_wagner_l2(model, x, y, clip_values=(0.0, 1.0), **cw_kw), y)
    d_df = distortion(model, x, deepfool(model, x, clip_values=(0.0, 1.0)), y)
    t_attack = time.perf_counter() - t0
    d_best = torch.minimum(d_cw, d_df)
    s = res.per_sample
    n = s.numel()

    def below(d):
        found = torch.isfinite(d)
        ok = s[found] <= d[found]
        return f"{int(ok.sum())}/{int(found.sum())} ({100.0 * float(ok.double().mean()):.0f}%)"

    above = torch.isfinite(d_best) & (s > d_best)
    excess = ((s[above] / d_best[above]) - 1).max().item() * 100 if above.any() else 0.0
    ratio = (s / d_best)[torch.isfinite(d_best)]
    lines += [
        f"| {name} | {n} | {clever_kw['radius']} | {clever_kw['n_batches']} x {clever_kw['n_samples']} | "
        f"{below(d_cw)} | {below(d_df)} | {below(d_best)} | {excess:.0f}% | "
        f"{float(ratio.median()):.2f} | {float(s.mean()):.3f} / {float(d_best[torch.isfinite(d_best)].mean()):.3f} | "
        f"{int(res.fallback.sum())}/{res.fallback.numel()} | {t_clever:.0f} s / {t_attack:.0f} s |"
    ]


def attack_comparison(lines):
    lines += ["### (2) CLEVER L2 (untargeted) vs minimal L2 distortion of C&W L2 and DeepFool", "",
              "Correctly classified images; clip (0, 1); 'below' = CLEVER score <= the attack's L2 distortion "
              "(among images the attack fooled); 'max excess' = largest (CLEVER / best attack - 1) where "
              "CLEVER is above.", "",
              "| model | images | R | N_b x N_s | below C&W | below DeepFool | below best | max excess | "
              "median CLEVER / best | mean CLEVER / mean best | fallbacks | time CLEVER / attacks |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    model = digits_cnn()
    x, y = correct_images(model, *digits("test"), 20)
    versus_attacks(lines, "digits CNN", model, x, y, dict(radius=2.0, n_batches=200, n_samples=128),
                   dict(binary_steps=9, steps=1000))
    cifar = aisafety_dir()
    if (cifar / "resnet20_cifar.pt").exists():
        model = resnet20_cifar(cifar / "resnet20_cifar.pt")
        x, y = correct_images(model, *aisafety_cifar10(), 10, per_class=True)
        versus_attacks(lines, "CIFAR-10 ResNet-20 (AISafety)", model, x, y,
                       dict(radius=2.0, n_batches=50, n_samples=32), dict(binary_steps=6, steps=200))
    else:
        lines.append(f"| CIFAR-10 ResNet-20 | skipped: {cifar} not found | | | | | | | | | | |")
    lines += ["", "C&W: digits 9 binary steps x 1000 Adam steps; CIFAR 6 x 200 (CPU time). DeepFool: 50 steps, "
              "overshoot 0.02.", ""]


def logit_scaling(lines):
    model = digits_cnn()
    x = digits("test")[0][:10]
    lines += ["### (3) Logit scaling invariance (digits CNN, 10 images, 20 x 64 samples)", "",
              "| norm | scale | max relative score difference |", "| --- | --- | --- |"]
    for norm, radius in ((2, 2.0), ("inf", 0.3)):
        kw = dict(norm=norm, radius=radius, n_batches=20, n_samples=64, clip_values=(0.0, 1.0), progress=False)
        base = clever(model, x, **kw).per_sample
        for factor in (3.0, 0.01):
            scaled = clever(nn.Sequential(model, _Scale(factor)), x, **kw).per_sample
            lines.append(f"| {norm} | {factor} | {float(((scaled - base).abs() / base).max()):.1e} |")
    lines.append("")


class _Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, z):
        return z * self.factor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", help="append the markdown section to this file (one write)")
    args = parser.parse_args()
    start = time.perf_counter()
    lines = ["", "## CLEVER validation (bench/validate_clever.py)", "",
             f"Command: `python bench/validate_clever.py{' --append ' + args.append if args.append else ''}` "
             f"(CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, compiled ops: {ops.compiled()}).", ""]
    linear_exactness(lines)
    attack_comparison(lines)
    logit_scaling(lines)
    lines += [f"Total time: {time.perf_counter() - start:.0f} s.", ""]
    section = "\n".join(lines)
    print(section)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
