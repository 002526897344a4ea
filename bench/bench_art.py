"""robustx.compat.art.clever_u against ART 1.20.1's clever_u: time ratio and score agreement.

Same arguments for both (digits CNN, robustx.data.digits("test"), nb_batches 50,
batch_size 100, L2 radius 2 and L-inf radius 0.3), np.random.seed(i) before each call on
image i. Calls alternate so both see the same machine load; each of ours is timed as the
best of --repeats runs (ART's once: it is the slow side). Also reports where our time goes
(gradients, Weibull fits) and the vectorised fit against scipy's one-at-a-time fits.

    python3 bench/bench_art.py --images 5 --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from art.metrics.metrics import clever_u as art_clever_u
from scipy.optimize import fmin
from scipy.stats import weibull_min
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustx.compat import art as rart  # noqa: E402
from robustx.data import digits  # noqa: E402
from robustx.models import digits_cnn  # noqa: E402

SETTINGS = ((2, 2.0), (np.inf, 0.3))  # (norm, radius)
NB_BATCHES, BATCH_SIZE = 50, 100


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


def ours(clf, x, norm, radius, seed):
    """Our score, whether the fit exploded, and the wall time."""
    np.random.seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        score = rart.clever_u(clf, x, NB_BATCHES, BATCH_SIZE, radius, norm, verbose=False)
        seconds = time.perf_counter() - start
    return score, any("exploded" in str(w.message) for w in caught), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = digits_cnn()
    clf = PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0)
    )
    x = digits("test")[0][: args.images].numpy()
    ours(clf, x[0], 2, 2.0, 0)  # warm-up

    grads = rart._pool_grad_norms = Timed(rart._pool_grad_norms)
    fits = rart.weibull_min_fit = Timed(rart.weibull_min_fit)
    print(f"torch threads {args.threads}, {args.images} images, nb_batches {NB_BATCHES}, batch_size {BATCH_SIZE}")
    header = ("norm", "img", "ART s", "ours s", "ratio", "ART score", "ours score", "rel diff", "exploded")
    print("{:>5} {:>3} {:>7} {:>7} {:>6} {:>12} {:>12} {:>9} {}".format(*header))
    for norm, radius in SETTINGS:
        t_art = t_ours = 0.0
        agree = exploded_count = 0
        disagree_explained = 0
        grads.seconds = fits.seconds = 0.0
        for i in range(args.images):
            np.random.seed(i)
            start = time.perf_counter()
            ref = art_clever_u(clf, x[i], NB_BATCHES, BATCH_SIZE, radius, norm, verbose=False)
            art_s = time.perf_counter() - start
            runs = [ours(clf, x[i], norm, radius, i) for _ in range(args.repeats)]
            score, exploded, _ = runs[0]
            ours_s = min(r[2] for r in runs)
            rel = abs(score / ref - 1)
            t_art += art_s
            t_ours += ours_s
            agree += rel < 1e-4
            exploded_count += exploded
            disagree_explained += rel >= 1e-4 and exploded
            times = f"{art_s:7.2f} {ours_s:7.3f} {art_s / ours_s:6.1f}"
            print(f"{norm:>5} {i:>3} {times} {ref:12.6g} {score:12.6g} {rel:9.1e} {exploded}")
        n = args.images
        per_call = args.repeats * n
        print(
            f"L{norm} radius {radius}: ART {t_art / n:.2f} s/image, ours {t_ours / n:.3f} s/image, "
            f"ratio {t_art / t_ours:.1f}x; "
            f"agree < 1e-4: {agree}/{n}; exploded fits (warned): {exploded_count}/{n}, "
            f"disagreements with an exploded fit: {disagree_explained}/{n - agree}; "
            f"ours per image: pools + gradients {grads.seconds / per_call:.3f} s, "
            f"Weibull fits {fits.seconds / per_call:.3f} s"
        )

    rng = np.random.RandomState(0)
    pools = rng.gamma(5.0, 1.0, (9, 1000)).astype(np.float32)
    data = -pools[:, rng.randint(0, 1000, (NB_BATCHES, BATCH_SIZE))].max(-1)
    start = time.perf_counter()
    vec = fits.fn(data)
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
