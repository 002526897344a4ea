"""Cost of NeuronCoverage.assess against a plain forward pass and the pure-PyTorch path.

Three timings over the same batches, interleaved, best of ``--reps`` (process CPU time on
CPU, so that other processes on shared cores do not count; wall time on GPU):

* forward   - ``model(x)`` per batch (eval, no_grad): the floor;
* assess    - ``NeuronCoverage.assess`` with the fused operator (compiled when robustx._C
              is built), all six metrics, default layers (every Conv/Linear);
* reference - the same ``assess`` with ``robustx.ops`` forced onto its pure-PyTorch
              reference ``coverage_update_ref`` (what runs when the extension is absent).

Prints assess / forward (the aim is <= 1.15 on CPU for the CIFAR ResNet-20) and the
speed-up reference / assess. A ResNet-50 at 224x224 section runs when CUDA and
torchvision are available. ``--append`` adds the results and command to bench/RESULTS.md.

    python3 bench/bench_coverage.py --append
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from robustx import models, ops
from robustx.coverage import NeuronCoverage


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_all(model, batches, device) -> None:
    with torch.no_grad():
        for x in batches:
            model(x)
    sync(device)


def timed(fn, device) -> float:
    """Wall time on GPU; process CPU time on CPU (robust to other processes on shared cores)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    sync(device)
    t0 = clock()
    fn()
    sync(device)
    return clock() - t0


def bench(model, x, batch_size: int, reps: int, device: torch.device) -> dict:
    model = model.to(device).eval()
    x = x.to(device)
    batches = list(x.split(batch_size))
    cov = NeuronCoverage(model, batch_size=batch_size, progress=False).profile(x[: 2 * batch_size])

    def assess():  # steady state: the layers were found once, the profile is kept
        cov.reset().assess(batches)
        sync(device)

    def reference():
        with ops.reference_ops():
            assess()

    runs = {"forward": lambda: forward_all(model, batches, device), "assess": assess, "reference": reference}
    for fn in runs.values():  # warm-up
        fn()
    best = {name: float("inf") for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, device))
    best["neurons"] = cov.result().neurons
    return best


def report(title: str, n: int, t: dict) -> str:
    return (
        f"| {title} | {n} | {t['neurons']} | {t['forward'] * 1e3:.0f} | {t['assess'] * 1e3:.0f} | "
        f"{t['reference'] * 1e3:.0f} | {t['assess'] / t['forward']:.3f} | {t['reference'] / t['assess']:.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="CIFAR inputs (CPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--gpu-n", type=int, default=1024, help="ImageNet-size inputs (GPU)")
    ap.add_argument("--gpu-batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on shared cores OpenMP spin-waiting inflates CPU time)")
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()

    warnings.filterwarnings("ignore", message="KMNC, NBC and SNAC need")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    cpu = torch.device("cpu")
    x = torch.rand(args.n, 3, 32, 32, generator=g)
    t = bench(models.resnet20_cifar(), x, args.batch_size, args.reps, cpu)
    rows.append(report(f"ResNet-20 CIFAR, CPU ({torch.get_num_threads()} threads)", args.n, t))
    print(rows[-1], flush=True)
    if torch.cuda.is_available():
        try:
            import torchvision
        except ImportError:
            torchvision = None
        if torchvision is not None:
            dev = torch.device("cuda")
            xg = torch.rand(args.gpu_n, 3, 224, 224, generator=g)
            t = bench(torchvision.models.resnet50(), xg, args.gpu_batch_size, args.reps, dev)
            rows.append(report(f"ResNet-50 224x224, {torch.cuda.get_device_name()}", args.gpu_n, t))
            print(rows[-1], flush=True)
    header = (
        "| model, device | inputs | neurons | forward ms | assess ms | reference ms | assess / forward | "
        "reference / assess |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    table = header + "\n" + "\n".join(rows)
    print(table)
    if args.append:
        cmd = "python3 bench/bench_coverage.py " + " ".join(sys.argv[1:])
        text = (
            f"\n## Neuron coverage: assess vs forward (bench/bench_coverage.py)\n\n"
            f"Command: `{cmd.strip()}` (torch {torch.__version__}, compiled ops: {ops.compiled()}, "
            f"batch {args.batch_size}, best of {args.reps} interleaved runs; CPU rows in process CPU time, GPU rows "
            f"in wall time). assess = all six metrics over every "
            f"Conv/Linear output through the fused `coverage_update` op; reference = the same with the "
            f"pure-PyTorch `coverage_update_ref`. Aim: assess / forward <= 1.15.\n\n{table}\n"
        )
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
