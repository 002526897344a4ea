"""robustx evaluate at scale on the CPU: peak memory, store size and suite overhead vs N.

A generated ImageNet-style folder of 224x224 JPEGs (10 classes) and a small 224-input
CNN; the suite CA, AA_W (PGD L-inf, 3 steps), ALD_2, ASS (over PGD's examples:
``minimal_attack="pgd"``, so the floor below counts every pass), NC and NU, batches of 64
decoded by 2 DataLoader workers ahead of the batch being evaluated. Each N runs in a
fresh process, which reports:

- peak RSS (``ru_maxrss``) of the whole run, and its growth over the smallest N;
- ``store.sqlite`` bytes per input;
- the suite overhead: the run's wall time over the time of the model passes the suite
  cannot avoid, measured in the same process right after, on the same batches (already
  decoded): per batch one clean forward, the attack's 3 forward+backward passes, one
  forward on the adversarial examples, the coverage forward and the NU forward (on the
  adversarial examples).

    python bench/bench_streaming.py [--sizes 256 1024 4096] [--out bench/out/streaming]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

METRICS = ["CA", "AA_W", "ALD_2", "ASS", "NC", "NU"]
PGD = {"eps": 4 / 255, "norm": "inf", "steps": 3, "step_size": 2 / 255}
BATCH, WORKERS = 64, 2


def small_cnn() -> nn.Module:
    """A 224-input CNN: three stride-2 3x3 convolutions (16, 32, 32 channels), pooled, 10 classes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def make_folder(root: Path, n: int) -> None:
    """``n`` smooth random 256x256 JPEGs (quality 90) in 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    have = len(list(root.glob("*/*.jpg"))) if root.exists() else 0
    for i in range(have, n):
        coarse = rng.random((8, 8, 3))
        image = np.kron(coarse, np.ones((32, 32, 1))) * 0.7 + rng.random((256, 256, 3)) * 0.3
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def floor_seconds(model: nn.Module, dataset) -> float:
    """The bare passes of the suite on the same batches (decoded beforehand, not timed)."""
    from robustx.pipeline.stream import InputStream

    stream = InputStream(dataset, BATCH, WORKERS)
    total = 0.0
    for _, _, x, y in stream.batches(range(stream.n_batches)):
        start = time.perf_counter()
        with torch.no_grad():
            model(x)  # clean logits
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(PGD["steps"]):  # the attack: forward + input gradient per step
            loss = nn.functional.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta + PGD["step_size"] * grad.sign()).clamp(-PGD["eps"], PGD["eps"]).detach().requires_grad_()
        with torch.no_grad():
            model(x + delta)  # logits of the adversarial examples
            model(x)  # coverage pass
            model(x + delta)  # NU pass (on the adversarial examples)
        total += time.perf_counter() - start
    return total


def child(n: int, folder: Path, out: Path) -> dict:
    import robustx
    from robustx.pipeline.imagefolder import folder_dataset

    torch.set_num_threads(2)
    model = small_cnn()
    dataset = folder_dataset(folder, n, resize=224, crop=224)
    start = time.perf_counter()
    report = robustx.evaluate(model, dataset, metrics=METRICS, attacks={"pgd": PGD}, minimal_attack="pgd",
                              batch_size=BATCH,
                              workers=WORKERS, out=out, progress=False)
    wall = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    floor = floor_seconds(model, dataset)
    store = (out / "store.sqlite").stat().st_size + sum(p.stat().st_size for p in out.glob("store.sqlite-*"))
    return {"n": n, "wall_s": wall, "floor_s": floor, "overhead": wall / floor, "peak_rss_mb": rss_mb,
            "store_bytes_per_input": store / n, "values": {k: m.value for k, m in report.metrics.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--out", type=Path, default=Path("bench/out/streaming"))
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.out / "images"
    if args.child is not None:
        print(json.dumps(child(args.child, folder, args.out / f"run-{args.child}")))
        return
    make_folder(folder, max(args.sizes))
    rows = []
    for n in args.sizes:
        run = args.out / f"run-{n}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--out", str(args.out)], check=True,
                              capture_output=True, text=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mb"]
    print("| N | wall s | floor s | overhead (wall / floor) | peak RSS MB | RSS growth MB | store bytes / input |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['n']} | {r['wall_s']:.1f} | {r['floor_s']:.1f} | {r['overhead']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - base:+.0f} | {r['store_bytes_per_input']:.0f} |")
    print("\nvalues:", json.dumps({r["n"]: r["values"] for r in rows}))


if __name__ == "__main__":
    main()
