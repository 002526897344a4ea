"""Cost of the model-behaviour metrics against plain forward passes of the CIFAR ResNet-20.

1. The CIFAR-10-C corruptions (--corruptions, default all 15) x 5 severities on --n
   CIFAR-sized inputs (the 100 real AISafety test images tiled), each timed next to one
   forward pass of the ResNet-20 over the same inputs (batches of --batch-size, no grad).
2. EBD on --ebd-n of the real images (0: skipped): wall time against the forward passes
   it needs (1 clean + m (steps + bisection) points per input), timed as plain forward
   passes in the same batch sizes.

    python3 bench/bench_metrics_model.py [--n 10000] [--corruptions NAME ...] [--ebd-n 20] [--threads 2]
"""
import argparse
import time

import torch


from robustx.data import aisafety_cifar10, aisafety_dir
from robustx.metrics.boundary import ebd
from robustx.metrics.corruption import CORRUPTIONS, corrupt, corruption_errors, mce
from robustx.models import resnet20_cifar
from robustx.modelutil import chunks


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward(model, x, batch_size):
    with torch.no_grad():
        for part in chunks(x.shape[0], batch_size):
            model(x[part])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    parser.add_argument("--ebd-n", type=int, default=20)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--bisection", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x100, y100 = aisafety_cifar10()
    model = resnet20_cifar(aisafety_dir() / "resnet20_cifar.pt")
    x = x100.repeat((args.n + 99) // 100, 1, 1, 1)[: args.n].contiguous()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} inputs {tuple(x.shape[1:])}")

    forward(model, x[: args.batch_size], args.batch_size)  # warm-up
    before = timed(lambda: forward(model, x, args.batch_size))
    times = {name: sum(timed(lambda: corrupt(x, name, s, seed=s)) for s in range(1, 6)) for name in args.corruptions}
    fwd = (before + timed(lambda: forward(model, x, args.batch_size))) / 2
    print(f"\none ResNet-20 forward pass over the {args.n} inputs: {fwd:.2f} s (mean of one before, one after)")
    print("\n| corruption | 5 severities s | per severity s | per severity / forward pass |")
    print("| --- | --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {t / 5:.2f} | {t / 5 / fwd:.2f} |")
    total, runs = sum(times.values()), 5 * len(times)
    print(f"| all {runs} | {total:.2f} | {total / runs:.2f} | {total / runs / fwd:.2f} |")

    errors = corruption_errors(model, x100, y100, corruptions=args.corruptions, batch_size=100, progress=False)
    print("\nResNet-20 on the 100 real images, error per severity 1..5:")
    for name, e in errors.items():
        print(f"  {name}: {', '.join(f'{v:.2f}' for v in e)}")
    print(f"  unnormalised mCE = {mce(errors):.4f}")

    if args.ebd_n == 0:
        return
    xe, ye = x100[: args.ebd_n], y100[: args.ebd_n]
    batch = 1024
    for mode in ("stop", "clamp"):
        start = time.perf_counter()
        res = ebd(model, xe, ye, m=args.m, steps=args.steps, bisection=args.bisection, out_of_box=mode,
                  batch_size=batch, progress=False)
        t = time.perf_counter() - start
        per_chunk = max(1, batch // (args.m * args.steps))
        points = torch.rand(per_chunk * args.m * args.steps, *x.shape[1:])
        small = torch.rand(per_chunk * args.m, *x.shape[1:])

        def floor():
            for part in chunks(args.ebd_n, per_chunk):
                with torch.no_grad():
                    model(xe[part])
                    model(points[: (part.stop - part.start) * args.m * args.steps])
                    for _ in range(args.bisection):
                        model(small[: (part.stop - part.start) * args.m])

        f = timed(floor)
        n_fwd = args.ebd_n * (1 + args.m * (args.steps + args.bisection))
        print(f"\nEBD ({mode}), {args.ebd_n} images, m={args.m}, steps={args.steps}, bisection={args.bisection}: "
              f"{t:.2f} s; its {n_fwd} forward points as plain passes {f:.2f} s; ratio {t / f:.2f}; "
              f"value {res.value:.4f}, in C {int(res.correct.sum())}, censored {res.censored}")


if __name__ == "__main__":
    main()
