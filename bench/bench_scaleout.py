"""CPU scale-out: `robustx evaluate` on 1 and 2 processes, its throughput, and CLEVER top-2
on a 224x224 ResNet-50 (random weights) against the bare forward/backward floor.

Evaluate runs (CIFAR ResNet-20, the 100 AISafety images as ``--data cifar100``, ``-n N --batch-size B``; under torchrun the
batches are dealt to the ranks, so N / B should be a multiple of 2):

* 1 process x 1 thread   (OMP_NUM_THREADS=1)  -> t_1x1
* 1 process x 2 threads  (OMP_NUM_THREADS=2)  -> t_1x2
* 2 processes x 1 thread (torchrun --standalone --nproc_per_node=2, OMP_NUM_THREADS=1) -> t_2x1

Process scaling efficiency E = t_1x1 / (2 * t_2x1) (1 = two processes halve the time);
processes vs threads on the same two cores: t_1x2 / t_2x1 (> 1: two processes are faster).
Times are the run's own ``seconds`` in report.json (model load to report, without Python
start-up); wall times of the whole command are printed too. Best of --repeats.

    python bench/bench_scaleout.py [--n 64] [--repeats 1] [--append bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ((1, 1), (1, 2), (2, 1))  # (processes, threads per process)


def evaluate_command(procs: int, n: int, batch_size: int, metrics: str, out: Path) -> list[str]:
    """`robustx evaluate` on the CIFAR ResNet-20, under torchrun when procs > 1."""
    args = ["-m", "robustx", "evaluate", "--model", "resnet20", "--data", "cifar100", "--metrics", metrics,
            "-n", str(n), "--batch-size", str(batch_size), "--out", str(out), "--no-progress"]
    if procs > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]
    return [sys.executable, *args]


def run_evaluate(procs: int, threads: int, n: int, batch_size: int, metrics: str) -> tuple[float, float]:
    """(run seconds from report.json, wall seconds of the command) of one evaluate run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ROBUSTX_NO_PROGRESS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        subprocess.run(evaluate_command(procs, n, batch_size, metrics, out), cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        run = json.loads((out / "report.json").read_text())["run"]
        assert run["processes"] == procs and run["inputs"] == n
        return run["seconds"], wall


def evaluate_section(args) -> list[str]:
    """Times of every configuration, best of ``args.repeats`` (configurations interleaved)."""
    best = {c: (float("inf"), float("inf")) for c in CONFIGS}
    for _ in range(args.repeats):
        for procs, threads in CONFIGS:
            best[procs, threads] = min(best[procs, threads], run_evaluate(procs, threads, args.n, args.batch_size, args.metrics))
            print(f"{procs} x {threads}: run {best[procs, threads][0]:.1f} s, wall {best[procs, threads][1]:.1f} s",
                  flush=True)
    t11, t12, t21 = (best[c][0] for c in CONFIGS)
    lines = ["| processes x threads | run s | wall s | images/s (run) | images/s (wall) |", "| --- | ---: | ---: | ---: | ---: |"]
    for (procs, threads), (run_s, wall_s) in best.items():
        lines.append(f"| {procs} x {threads} | {run_s:.1f} | {wall_s:.1f} | {args.n / run_s:.2f} | {args.n / wall_s:.2f} |")
    lines += ["", f"Process scaling efficiency E = t_1x1 / (2 t_2x1) = {t11:.1f} / (2 x {t21:.1f}) = {t11 / (2 * t21):.2f}; "
              f"thread scaling t_1x1 / (2 t_1x2) = {t11 / (2 * t12):.2f}; processes vs threads on two cores "
              f"t_1x2 / t_2x1 = {t12 / t21:.2f}.", ""]
    return lines


def clever_section(args) -> list[str]:
    """CLEVER top-2 L2 on a random ResNet-50 at 224x224 against bench_clever's floor."""
    import bench_clever
    from gpu_check import forward_flops
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, source = torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__}"
    model.eval()
    x = torch.rand(args.images, 3, 224, 224)
    rows = bench_clever.auto_points(model, x)
    times, _ = bench_clever.compare(model, x, 2, 2.0, "top2", args.r50_batches, args.r50_samples, rows,
                                    args.repeats, (0.0, 1.0))
    t_c, t_f = times["clever"], times["new"]  # one target: the new floor is the old one
    n_rows = args.images * args.r50_batches * args.r50_samples
    gflop = 2 * forward_flops(model, x) * n_rows / 1e9  # forward + input gradient, weights frozen
    return [f"ResNet-50 ({source}), random weights, {args.images} images 3x224x224, targeted top-2 (one target), "
            f"L2 R = 2, N_b = {args.r50_batches} x N_s = {args.r50_samples} = {n_rows} rows, {rows} rows per pass, "
            f"{args.threads} threads, best of {args.repeats} (after a warm-up of each).", "",
            "| CLEVER s | floor s | CLEVER / floor | floor GFLOP/s (~2x forward per row) |", "| ---: | ---: | ---: | ---: |",
            f"| {t_c:.1f} | {t_f:.1f} | {t_c / t_f:.2f} | {gflop / t_f:.1f} |", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="inputs for evaluate (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="evaluate's batch size; batches are dealt to the ranks (default %(default)s)")
    parser.add_argument("--metrics", default="CA,AA_W,ALD_2,NC,DIV")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the CLEVER part")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--r50-batches", type=int, default=2)
    parser.add_argument("--r50-samples", type=int, default=8)
    parser.add_argument("--append", help="append the markdown section to this file")
    args = parser.parse_args()
    load = os.getloadavg()
    lines = ["", "## CPU scale-out: evaluate on 1 and 2 processes, CLEVER on ResNet-50 (bench/bench_scaleout.py)", "",
             f"Command: `{' '.join(['python bench/bench_scaleout.py', *sys.argv[1:]])}` "
             f"(torch {torch.__version__}; shared {os.cpu_count()}-core CPU, load average {load[0]:.1f} / {load[1]:.1f} "
             "at the start; other jobs ran alongside, so compare ratios within this run only).", "",
             f"### robustx evaluate, CIFAR ResNet-20, `--data cifar100 -n {args.n} --batch-size {args.batch_size} --metrics {args.metrics}`", "",
             "t_PxT = run seconds (report.json) with P processes of T threads; E = t_1x1 / (2 t_2x1).", ""]
    lines += evaluate_section(args)
    lines += ["### CLEVER top-2 on ResNet-50 224x224 against the forward/backward floor", ""]
    lines += clever_section(args)
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
