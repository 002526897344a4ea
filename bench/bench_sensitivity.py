"""Cost of neuron sensitivity over a data set against two plain forward passes.

neuron_sensitivity needs one forward pass over the benign and one over the adversarial
inputs; this measures its wall time against exactly those two passes (no hooks, no
distances) on the same batches, interleaved, median of --repeats runs:

    python3 bench/bench_sensitivity.py [--device cuda] [--n 2048]
"""
import argparse
import statistics
import time

import torch


from robustx.models import DigitsCNN, ResNet20
from robustx.modelutil import chunks
from robustx.sensitivity import neuron_sensitivity


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def two_forwards(model, x, x_adv, batch_size: int) -> None:
    with torch.no_grad():
        for s in chunks(x.shape[0], batch_size):
            model(x[s])
            model(x_adv[s])


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench(label, model, shape, args, device) -> str:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.n,) + shape, generator=g).to(device)
    x_adv = (x + 0.03 * torch.randn(x.shape, generator=g).to(device)).clamp(0, 1)
    model = model.to(device).eval()
    runs = {
        "2 forwards": lambda: two_forwards(model, x, x_adv, args.batch_size),
        "sensitivity, all Conv/Linear": lambda: neuron_sensitivity(model, x, x_adv, batch_size=args.batch_size, progress=False),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["2 forwards"]
    n_layers = len(neuron_sensitivity(model, x[:2], x_adv[:2], progress=False))
    return "\n".join(
        f"| {label} ({n_layers} layers) | {args.n} | {k} | {v * 1e3:.1f} | {v / base:.2f} |" for k, v in med.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"median of {args.repeats}\n")
    print("| model | N pairs | what | ms | ratio to 2 forwards |\n| --- | --- | --- | --- | --- |")
    print(bench("DigitsCNN 1x8x8", DigitsCNN(), (1, 8, 8), args, device))
    print(bench("ResNet-20 3x32x32", ResNet20(), (3, 32, 32), args, device))


if __name__ == "__main__":
    main()
