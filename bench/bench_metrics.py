"""Cost of the robustx.metrics functions on CIFAR-sized inputs next to one forward pass of
the CIFAR ResNet-20 on the same inputs (ratio = metric time / forward time), plus the
batched SSIM against scikit-image one image at a time and the batched PSD against a
per-pixel Python loop (both timed on a subset and scaled to the full set):

    python3 bench/bench_metrics.py [--n 10000] [--repeats 3] [--threads 2]

Inputs are random (the cost does not depend on the values); every example counts as a
successful one (S = everything: the largest work for the means over S).
"""
import argparse
import statistics
import time

import numpy as np
import torch


from robustx import metrics
from robustx.models import ResNet20


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def forward(model, x, batch_size=500):
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in torch.split(x, batch_size)])


def skimage_ass(x, x_adv):
    from skimage.metrics import structural_similarity

    a, b = x.double().numpy(), x_adv.double().numpy()
    return np.mean([structural_similarity(a[i], b[i], channel_axis=0, data_range=1.0) for i in range(len(a))])


def loop_psd(x, x_adv, floor=1 / 255):
    a, b = x.double().numpy(), x_adv.double().numpy()
    total = 0.0
    for i in range(a.shape[0]):
        for c in range(a.shape[1]):
            padded = np.pad(a[i, c], 1, mode="reflect")
            for r in range(a.shape[2]):
                for q in range(a.shape[3]):
                    total += abs(b[i, c, r, q] - a[i, c, r, q]) / max(np.std(padded[r:r + 3, q:q + 3]), floor)
    return total / a.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skimage-subset", type=int, default=200)
    parser.add_argument("--loop-subset", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, 32, 32, generator=g)
    x_adv = (x + 8 / 255 * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
    y = torch.randint(0, 10, (args.n,), generator=g)
    model = ResNet20().eval()
    logits, logits_adv = forward(model, x), forward(model, x_adv)
    success = torch.ones(args.n, dtype=torch.bool)

    base = timed(lambda: forward(model, x), args.repeats)
    runs = {
        "success_mask": lambda: metrics.success_mask(logits, logits_adv, y),
        "accuracy (CA / AA)": lambda: metrics.accuracy(logits, y),
        "ALD_0": lambda: metrics.ald(x, x_adv, success, 0),
        "ALD_2": lambda: metrics.ald(x, x_adv, success, 2),
        "ALD_inf": lambda: metrics.ald(x, x_adv, success, "inf"),
        "ASS": lambda: metrics.ass(x, x_adv, success),
        "PSD": lambda: metrics.psd(x, x_adv, success),
        "ACAC": lambda: metrics.acac(logits_adv, success),
        "ACTC": lambda: metrics.actc(logits_adv, y, success),
        "NTE": lambda: metrics.nte(logits_adv, success),
        "RGB / RIC (from logits)": lambda: metrics.rgb(logits_adv, y, success),
        "defense_utility (CAV..COS)": lambda: metrics.defense_utility(logits, logits_adv, y),
        "gaussian_blur_8bit (RGB input)": lambda: metrics.gaussian_blur_8bit(x_adv),
        "jpeg_8bit (RIC input, Pillow)": lambda: metrics.jpeg_8bit(x_adv),
    }
    rows = [(name, timed(fn, args.repeats)) for name, fn in runs.items()]

    k = min(args.skimage_subset, args.n)
    sk = timed(lambda: skimage_ass(x[:k], x_adv[:k]), 1) * args.n / k
    m = min(args.loop_subset, args.n)
    loop = timed(lambda: loop_psd(x[:m], x_adv[:m]), 1) * args.n / m
    np.testing.assert_allclose(metrics.ass(x[:k], x_adv[:k], success[:k]), skimage_ass(x[:k], x_adv[:k]), atol=1e-6)
    np.testing.assert_allclose(metrics.psd(x[:m], x_adv[:m], success[:m]), loop_psd(x[:m], x_adv[:m]), rtol=1e-6)
    ass_t = dict(rows)["ASS"]
    psd_t = dict(rows)["PSD"]

    print(f"{args.n} inputs 3x32x32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print()
    print("| metric | time s | / ResNet-20 forward |")
    print("| --- | --- | --- |")
    print(f"| ResNet-20 forward (batches of 500, no grad) | {base:.3f} | 1.00 |")
    for name, t in rows:
        print(f"| {name} | {t:.4f} | {t / base:.3f} |")
    print()
    print("| comparison | reference s (scaled to n) | robustx s | speed-up |")
    print("| --- | --- | --- | --- |")
    print(f"| ASS vs skimage structural_similarity per image ({k} timed) | {sk:.2f} | {ass_t:.3f} | {sk / ass_t:.1f}x |")
    print(f"| PSD vs per-pixel Python loop ({m} timed) | {loop:.1f} | {psd_t:.3f} | {loop / psd_t:.0f}x |")


if __name__ == "__main__":
    main()
