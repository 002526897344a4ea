"""Speed of input_landscape: a 41x41 landscape of a batch of images against (a) one plain
forward pass over the same number of points, already in memory, in the same batches, and
(b) evaluating the grid points one forward call at a time.

    python3 bench/bench_landscape.py [--threads N] [--digits-images 16] [--cifar-images 2]

Prints a markdown table of seconds (best of --repeat runs; the per-point loop runs once)
and the ratios, measured in this one run. CIFAR rows need ../shared/data/aisafety-cifar10.
"""
from __future__ import annotations

import argparse
import time

import torch

from robustx import data, models
from robustx.landscape import _grid_coefficients, input_landscape
from robustx.modelutil import chunks

STEPS, BATCH = 41, 4096


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def all_points(x: torch.Tensor, land) -> torch.Tensor:
    """The landscape's points (N * P, *shape), materialised."""
    alpha, beta = (c.to(x.dtype) for c in _grid_coefficients(land.axis))
    shape = (1, -1) + (1,) * (x.dim() - 1)
    d1, d2 = land.directions[0][:, None], land.directions[1][:, None]
    return (x[:, None] + alpha.view(shape) * d1 + beta.view(shape) * d2).flatten(0, 1)


def bench(name: str, model, x, y, span: float, repeat: int) -> str:
    kwargs = dict(span=span, steps=STEPS, surface="margin", clip_values=None, batch_size=BATCH, progress=False)
    land = input_landscape(model, x, y, **kwargs)
    points = all_points(x, land)
    n_points = points.shape[0]

    def plain():
        with torch.no_grad():
            for sl in chunks(n_points, BATCH):
                model(points[sl])

    def one_at_a_time():
        with torch.no_grad():
            for i in range(n_points):
                model(points[i : i + 1])

    t_land = best_of(lambda: input_landscape(model, x, y, **kwargs), repeat)
    t_plain = best_of(plain, repeat)
    t_loop = best_of(one_at_a_time, 1)
    return (f"| {name} | {x.shape[0]} | {n_points} | {t_land:.3f} | {t_plain:.3f} | {t_loop:.2f} | "
            f"{t_land / t_plain:.2f} | {t_loop / t_land:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--digits-images", type=int, default=16)
    parser.add_argument("--cifar-images", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    x, y = data.digits("test")
    n = args.digits_images
    rows.append(bench("digits CNN", models.digits_cnn(), x[:n], y[:n], 0.5, args.repeat))
    root = data.aisafety_dir()
    if (root / "resnet20_cifar.pt").is_file():
        x, y = data.aisafety_cifar10(root)
        n = args.cifar_images
        rows.append(bench("ResNet-20 CIFAR-10", models.resnet20_cifar(root / "resnet20_cifar.pt"), x[:n], y[:n],
                          8 / 255, args.repeat))
    print(f"41x41 grid + 2 slices of 41 = {STEPS * STEPS + 2 * STEPS} points per image, "
          f"batches of {BATCH}, torch threads {torch.get_num_threads()}, CPU, float32.\n")
    print("| model | images | points | input_landscape s | plain forward s | one point per call s | "
          "landscape / plain | per-point / landscape |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
