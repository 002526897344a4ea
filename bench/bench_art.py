"""robustx.compat.art.clever_u against ART 1.20.1's clever_u, and both against the floor.

ART's arguments for both (nb_batches 50, batch_size 100, pool_factor 10: 9 targets x 1000
points = 9000 gradient rows per image): the digits CNN (robustx.data.digits("test"), L2
radius 2 and L-inf radius 0.3) and the real CIFAR-10 ResNet-20 (AISafety resnet20_cifar.pt,
its test images, L2 radius 2), np.random.seed(i) before each call on image i. Calls
alternate so all see the same machine load; ours and the floor are timed as the best of
--repeats runs (ART's once: it is the slow side). The floor is the bare forward/backward
of the same number of rows (9000 points, output gradient e_c - e_j) in batches of
--floor-batch, in this process. Also reports where our time goes (gradients, Weibull
fits) and the vectorised fit against scipy's one-at-a-time fits.

    python bench/bench_art.py --images 3 --cifar-images 2 --threads 2
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from art.metrics.metrics import clever_u as art_clever_u
from scipy.optimize import fmin
from scipy.stats import weibull_min
from torch import nn

from robustx.compat import art as rart
from robustx.data import aisafety_cifar10, aisafety_dir, digits
from robustx.models import digits_cnn, resnet20_cifar
from robustx.modelutil import frozen_eval

NB_BATCHES, BATCH_SIZE, POOL_FACTOR = 50, 100, 10


class Timed:
    """Wraps a function and accumulates its wall time."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def floor(model, x, batch):
    """Seconds of the bare forward/backward of 9 targets x 1000 points around x, in batches."""
    k = 10
    n = (k - 1) * POOL_FACTOR * BATCH_SIZE
    points = torch.from_numpy(x[None]).expand(batch, *x.shape) + 0.01 * torch.randn(batch, *x.shape)
    weights = torch.zeros(batch, k)
    weights[:, 0], weights[:, 1] = 1.0, -1.0
    with frozen_eval(model), torch.enable_grad():
        start = time.perf_counter()
        for first in range(0, n, batch):
            rows = points[: min(batch, n - first)].clone().requires_grad_(True)
            torch.autograd.grad(model(rows), rows, weights[: rows.shape[0]])
        return time.perf_counter() - start


def ours(clf, x, norm, radius, seed):
    """Our score, whether the fit exploded, and the wall time."""
    np.random.seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        score = rart.clever_u(clf, x, NB_BATCHES, BATCH_SIZE, radius, norm, verbose=False)
        seconds = time.perf_counter() - start
    return score, any("exploded" in str(w.message) for w in caught), seconds


def cases(n_digits: int, n_cifar: int):
    """(name, model, ART classifier, images, [(norm, radius)])."""
    model = digits_cnn()
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                            clip_values=(0.0, 1.0))
    yield "digits CNN", model, clf, digits("test")[0][:n_digits].numpy(), ((2, 2.0), (np.inf, 0.3))
    if n_cifar:
        model = resnet20_cifar(aisafety_dir() / "resnet20_cifar.pt")
        clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                clip_values=(0.0, 1.0))
        yield "CIFAR ResNet-20", model, clf, aisafety_cifar10()[0][:n_cifar].numpy(), ((2, 2.0),)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--cifar-images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor-batch", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grads = rart._pool_grad_norms = Timed(rart._pool_grad_norms)
    fits = rart.weibull_min_fit = Timed(rart.weibull_min_fit)
    print(f"torch threads {args.threads}, nb_batches {NB_BATCHES}, batch_size {BATCH_SIZE}, floor batch "
          f"{args.floor_batch}")
    for name, model, clf, x, settings in cases(args.images, args.cifar_images):
        ours(clf, x[0], 2, 2.0, 0)  # warm-up
        print(f"== {name}, {len(x)} images")
        measure(model, clf, x, settings, args, grads, fits)
    fit_comparison(fits.fn)


def measure(model, clf, x, settings, args, grads, fits) -> None:
    header = ("norm", "img", "ART s", "ours s", "floor s", "ART/ours", "ours/floor", "ART score", "ours score",
              "rel diff", "exploded")
    print("{:>5} {:>3} {:>7} {:>7} {:>7} {:>8} {:>10} {:>12} {:>12} {:>9} {}".format(*header))
    for norm, radius in settings:
        t_art = t_ours = t_floor = 0.0
        agree = exploded_count = 0
        disagree_explained = 0
        grads.seconds = fits.seconds = 0.0
        for i in range(len(x)):
            np.random.seed(i)
            start = time.perf_counter()
            ref = art_clever_u(clf, x[i], NB_BATCHES, BATCH_SIZE, radius, norm, verbose=False)
            art_s = time.perf_counter() - start
            runs, floors = [], []
            for _ in range(args.repeats):
                runs.append(ours(clf, x[i], norm, radius, i))
                floors.append(floor(model, x[i], args.floor_batch))
            score, exploded, _ = runs[0]
            ours_s, floor_s = min(r[2] for r in runs), min(floors)
            rel = abs(score / ref - 1)
            t_art += art_s
            t_ours += ours_s
            t_floor += floor_s
            agree += rel < 1e-4
            exploded_count += exploded
            disagree_explained += rel >= 1e-4 and exploded
            times = f"{art_s:7.2f} {ours_s:7.3f} {floor_s:7.3f} {art_s / ours_s:8.2f} {ours_s / floor_s:10.2f}"
            print(f"{norm:>5} {i:>3} {times} {ref:12.6g} {score:12.6g} {rel:9.1e} {exploded}")
        n = len(x)
        per_call = args.repeats * n
        print(
            f"L{norm} radius {radius}: ART {t_art / n:.2f} s/image, ours {t_ours / n:.3f} s/image, "
            f"floor {t_floor / n:.3f} s/image; ART/ours {t_art / t_ours:.2f}x, ours/floor {t_ours / t_floor:.2f}x; "
            f"agree < 1e-4: {agree}/{n}; exploded fits (warned): {exploded_count}/{n}, "
            f"disagreements with an exploded fit: {disagree_explained}/{n - agree}; "
            f"ours per image: pools + gradients {grads.seconds / per_call:.3f} s, "
            f"Weibull fits {fits.seconds / per_call:.3f} s"
        )


def fit_comparison(weibull_min_fit) -> None:
    rng = np.random.RandomState(0)
    pools = rng.gamma(5.0, 1.0, (9, 1000)).astype(np.float32)
    data = -pools[:, rng.randint(0, 1000, (NB_BATCHES, BATCH_SIZE))].max(-1)
    start = time.perf_counter()
    vec = weibull_min_fit(data)
    t_vec = time.perf_counter() - start
    start = time.perf_counter()
    ref = np.array([weibull_min.fit(row, 1.0, optimizer=fmin) for row in data])
    t_scipy = time.perf_counter() - start
    print(
        f"9 Weibull fits of {NB_BATCHES} maxima: vectorised {t_vec:.3f} s, scipy one at a time {t_scipy:.3f} s "
        f"({t_scipy / t_vec:.1f}x), identical: {np.array_equal(vec, ref)}"
    )


if __name__ == "__main__":
    main()
