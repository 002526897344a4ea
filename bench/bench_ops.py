"""Microbenchmark: each compiled robustx operator against its pure-PyTorch reference.

Sizes are realistic: ball sampling around CIFAR (3x32x32) and ImageNet (3x224x224)
inputs, Jacobians of 10 classes (CIFAR, a CLEVER batch of 1024 samples) and of 1000
classes (ImageNet), coverage counting on ResNet-50 activations (layer1: 256x56x56,
layer4: 2048x7x7). Every row checks that both give the same result before timing.

    python3 bench/bench_ops.py                 # CPU (2 threads) and CUDA when available
    python3 bench/bench_ops.py --device cuda --repeats 20
    python3 bench/bench_ops.py --quick         # small sizes, a smoke test of this script

Prints a Markdown table: median wall time of the compiled op and of the reference (the
reference runs on the same device), and the speed-up reference / compiled.
"""
import argparse
import math
import statistics
import sys
import time

import torch

from robustx import ops


def measure(fn, device, repeats, budget_s):
    """Median seconds of fn() over up to ``repeats`` runs after one warm-up run; a function
    slower than ``budget_s`` is timed by its warm-up run alone."""

    def run_once():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, out

    first, out = run_once()
    if first > budget_s:
        return first, out
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        times.append(run_once()[0])
    return statistics.median(times), out


def on_device(fn, device):
    """Run fn with ``device`` as the default for factory calls (the references build index
    tensors with torch.arange and friends)."""

    def wrapped():
        with torch.device(device):
            return fn()

    return wrapped


# ----------------------------------------------------------------------------- cases
def ball_sample_cases(quick):
    sizes = [((1, 3, 32, 32), 1024), ((4, 3, 224, 224), 16)] if not quick else [((1, 3, 8, 8), 64)]
    for (n_centers, *shape), n in sizes:
        for p in (1.0, 2.0, math.inf):
            label = f"{n_centers} centers x {n} samples, {'x'.join(map(str, shape))}, p={p:g}"

            def make(device, n_centers=n_centers, shape=shape, n=n, p=p):
                centers = torch.rand(n_centers, math.prod(shape), device=device)
                args = (centers, n, 0.03, p, 0.0, 1.0, 0, 0)
                return (
                    lambda: torch.ops.robustx.ball_sample(*args),
                    on_device(lambda: ops.ball_sample_ref(*args), device),
                    dict(rtol=1e-5, atol=1e-6),
                )

            yield "ball_sample", label, make


def grad_norm_cases(quick):
    # (M, S, K, D, batch_size, T): T targets plus the source row c
    sizes = [(1, 1024, 10, 3 * 32 * 32, 128, 9), (1, 1, 1000, 3 * 224 * 224, 1, 999)]
    if quick:
        sizes = [(1, 64, 10, 3 * 8 * 8, 16, 9)]
    for m, s, k, d, batch_size, t in sizes:
        for q in (1.0, 2.0, math.inf):
            label = f"M={m} S={s} K={k} D={d} T={t}, q={q:g}"

            def make(device, m=m, s=s, k=k, d=d, batch_size=batch_size, t=t, q=q):
                jac = torch.randn(m, s, k, d, device=device)
                targets = torch.arange(1, t + 1, device=device).expand(m, t).contiguous()
                source = torch.zeros(m, dtype=torch.int64, device=device)
                args = (jac, source, targets, q, batch_size, False)
                return (
                    lambda: torch.ops.robustx.grad_norm_batch_max(*args)[0],
                    lambda: ops.grad_norm_batch_max_ref(*args)[0],
                    dict(rtol=1e-4, atol=1e-5),  # float32 sums over D = 150528 differ by ~3e-5
                )

            yield "grad_norm_batch_max", label, make


def coverage_cases(quick):
    sizes = [(64, 256, 56 * 56), (64, 2048, 7 * 7)] if not quick else [(8, 16, 5 * 5)]
    for n, m, length in sizes:
        label = f"N={n} M={m} L={length}, k=1000, top_k=2"

        def make(device, n=n, m=m, length=length):
            act = torch.randn(n, m, length, device=device).relu()
            v = act.double().mean(-1)
            low, high = v.amin(0) + 0.01, v.amax(0) - 0.01

            def call(op):
                def run():
                    states = [torch.zeros(m, 1000, dtype=torch.bool, device=device)]
                    states += [torch.zeros(m, dtype=torch.bool, device=device) for _ in range(4)]
                    idx = op(act, low, high, 1000, 0.5, 2, *states)
                    return torch.cat([idx.flatten().double()] + [s.flatten().double() for s in states])

                return run

            return call(torch.ops.robustx.coverage_update), on_device(call(ops.coverage_update_ref), device), dict(rtol=0, atol=0)

        yield "coverage_update", label, make


# ------------------------------------------------------------------------------ main
def bench(device, quick, repeats, budget_s):
    rows = []
    for cases in (ball_sample_cases, grad_norm_cases, coverage_cases):
        for op, label, make in cases(quick):
            compiled_fn, reference_fn, tolerance = make(device)
            t_compiled, got = measure(compiled_fn, device, repeats, budget_s)
            t_reference, want = measure(reference_fn, device, repeats, budget_s)
            torch.testing.assert_close(got, want, **tolerance)
            rows.append((op, label, device.type, t_compiled, t_reference))
            print(f"| {op} | {label} | {device.type} | {t_compiled * 1e3:.2f} | {t_reference * 1e3:.1f} | "
                  f"{t_reference / t_compiled:.1f}x |", flush=True)
            del compiled_fn, reference_fn, got, want
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (default 5)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per function (default 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that the script runs")
    args = parser.parse_args(argv)
    if not ops.compiled():
        sys.exit("no operator library is loaded: nothing compiled to benchmark (build robustx._C with "
                 "python3 setup.py build_ext --inplace, or point ROBUSTX_OPS_LIBRARY at a CMake build)")
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all"):
        has_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("robustx::ball_sample", "CUDA")
        if torch.cuda.is_available() and has_kernels:
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            sys.exit("no CUDA device, or robustx._C was built without CUDA kernels")
    print(f"torch {torch.__version__}, ops from {ops.source()}, {args.threads} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if any(d.type == "cuda" for d in devices) else ""))
    print("\n| op | case | device | compiled ms | reference ms | speed-up |\n| --- | --- | --- | ---: | ---: | ---: |")
    for device in devices:
        bench(device, args.quick, args.repeats, args.budget)


if __name__ == "__main__":
    main()
