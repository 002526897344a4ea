"""CLEVER's fallback policy measured: on_fallback="max" (before) against "resample" (after).

For each case, both policies on the same samples (the first N_b batches are the same
stream; "resample" adds batches only for pairs whose fit is ill-conditioned). Prints the
ill-conditioned (image, target) fallbacks, the unreliable images, the resampled pairs, the
mean score and the score change of the images whose score moved, and the wall time.

    python bench/exp_clever_fallback.py --case digits   # robustx clever table settings
    python bench/exp_clever_fallback.py --case cifar    # 5 ResNet-20 images, 100 x 128, top-2
    python bench/exp_clever_fallback.py --case exp      # logit margin exp(w.x) on 3x32x32
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

from robustx.clever import UNRELIABLE, clever
from robustx.clever_table import CLEVER_TABLE_DEFAULTS as TABLE


class ExpMargin(nn.Module):
    """Logits [exp(w.x), 0]: margin g = exp(w.x), ||grad g||_2 = ||w|| exp(w.x), whose
    maximum over B_2(x0, R) is ||w|| exp(w.x0 + R ||w||), far above what samples reach."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w.flatten())

    def forward(self, x):
        margin = torch.exp(x.flatten(1) @ self.w)
        return torch.stack((margin, torch.zeros_like(margin)), 1)


def digits_case():
    from robustx.data import digits
    from robustx.models import digits_cnn

    x = digits("test")[0][: TABLE["n_images"]]
    common = dict(n_batches=TABLE["n_batches"], n_samples=TABLE["n_samples"], clip_values=(0.0, 1.0), seed=TABLE["seed"])
    return [(f"digits CNN {TABLE['n_images']} images, {name}", digits_cnn(), x, dict(norm=norm, radius=r, **common))
            for name, norm, r in (("L2", 2, TABLE["radius_l2"]), ("Linf", "inf", TABLE["radius_linf"]))]


def cifar_case():
    from robustx.data import aisafety_cifar10, aisafety_dir
    from robustx.models import resnet20_cifar

    x = aisafety_cifar10()[0][:5]
    model = resnet20_cifar(aisafety_dir() / "resnet20_cifar.pt")
    settings = dict(norm=2, radius=2.0, n_batches=100, n_samples=128, targets="top2", clip_values=(0.0, 1.0))
    return [("CIFAR ResNet-20, 5 images, top-2 target, L2 radius 2", model, x, settings)]


def exp_case():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3 * 32 * 32, generator=gen)
    w = 2.0 * z / z.norm()
    x = torch.rand(3, 3, 32, 32, generator=gen)
    model = ExpMargin(w)
    lipschitz = w.norm() * torch.exp(x.flatten(1) @ w + 2.0 * w.norm())
    print(f"exp(w.x): true local Lipschitz constants {[round(v, 2) for v in lipschitz.tolist()]}, "
          f"true-constant CLEVER scores {[round(v, 5) for v in (torch.exp(x.flatten(1) @ w) / lipschitz).tolist()]}")
    return [(f"exp(w.x) margin, 3 images, L2 radius 2, {nb} x {ns}", model, x, dict(norm=2, radius=2.0, n_batches=nb,
                                                                                  n_samples=ns, clip_values=None))
            for nb, ns in ((100, 128), (20, 16))]


def run(model, x, settings, policy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        res = clever(model, x, on_fallback=policy, progress=False, **settings)
        seconds = time.perf_counter() - start
    warned = sum("ill-conditioned" in str(w.message) for w in caught)
    return res, seconds, warned


def compare(label, model, x, settings):
    before, t_before, w_before = run(model, x, settings, "max")
    after, t_after, w_after = run(model, x, settings, "resample")
    pairs = before.reason.numel()
    moved = before.per_sample != after.per_sample
    change = (after.per_sample[moved] / before.per_sample[moved]).tolist()
    print(f"{label}:\n"
          f"  max:      {int((before.reason >= UNRELIABLE).sum())}/{pairs} ill-conditioned fallbacks, "
          f"{int((~before.reliable).sum())}/{x.shape[0]} images unreliable, mean score {before.per_sample.mean():.4f}, "
          f"{t_before:.1f} s, {w_before} warning(s)\n"
          f"  resample: {int((after.reason >= UNRELIABLE).sum())}/{pairs} left, "
          f"{int((~after.reliable).sum())}/{x.shape[0]} images unreliable, "
          f"{int((after.batches > settings['n_batches']).sum())} pairs resampled (batches "
          f"{sorted(set(after.batches.flatten().tolist()))}), mean score {after.per_sample.mean():.4f}, {t_after:.1f} s, "
          f"{w_after} warning(s)\n"
          f"  images whose score moved: {int(moved.sum())}, score after / before: {[round(c, 3) for c in change]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("digits", "cifar", "exp"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for label, model, x, settings in {"digits": digits_case, "cifar": cifar_case, "exp": exp_case}[args.case]():
        compare(label, model, x, settings)


if __name__ == "__main__":
    main()
