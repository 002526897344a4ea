"""One-command GPU check: build the CUDA kernels, run the GPU tests, time the operators
against their memory-bandwidth floors, CLEVER and coverage on a 224x224 ResNet-50 against
its bare forward/backward, and the ART drop-in against ART on the CIFAR ResNet-20; all
results go to ONE markdown file.

    bench/gpu_check.sh [--dry-run] [--out FILE] [--budget SECONDS]

Every step runs in its own process with its own timeout (cut to what is left of
--budget, default 450 s); a failing or hanging step is recorded and the next one runs.
--dry-run does the same on the CPU at tiny sizes and skips the CUDA-only steps (CUDA
build, tests/gpu). ``--step NAME`` runs one step in-process and prints its markdown.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TAIL = 3000  # characters of a failing step's stderr kept in the report


def device_of(dry: bool) -> torch.device:
    return torch.device("cpu" if dry else "cuda")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_line(dry: bool) -> str:
    """Which machine the report is about: GPU name, memory, torch and CUDA versions."""
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    if dry:
        return f"Device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores; dry run), {versions}"
    if not torch.cuda.is_available():
        return f"Device: none (torch.cuda.is_available() is False), {versions}"
    props = torch.cuda.get_device_properties(0)
    return (f"Device: {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.1f} GiB, "
            f"{props.multi_processor_count} SMs, {torch.cuda.device_count()} GPU(s), {versions}")


# ----------------------------------------------------------------------------- in-process steps
def bandwidth(device: torch.device, n_bytes: int) -> float:
    """Bytes per second of a large tensor copy (read + write counted)."""
    from bench_ops import measure

    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds, _ = measure(lambda: dst.copy_(src), device, 10, 2.0)
    return 2 * n_bytes / seconds


def op_cases(dry: bool):
    """(op, label, call, bytes moved) per operator case; float32 tensors of 4 bytes."""
    shapes = dict(ball=[(1, 1024, 3 * 224 * 224)], grad=[(1, 1024, 10, 3 * 32 * 32), (1, 1, 1000, 3 * 224 * 224)],
                  cov=[(64, 256, 56 * 56), (64, 2048, 7 * 7)])
    if dry:
        shapes = dict(ball=[(1, 64, 3 * 16 * 16)], grad=[(1, 64, 10, 3 * 8 * 8)], cov=[(8, 16, 25)])
    for m, n, d in shapes["ball"]:
        for p in (1.0, 2.0, float("inf")):
            yield "ball_sample", f"{m} x {n} samples, D={d}, p={p:g}", \
                lambda dev, m=m, n=n, d=d, p=p: _ball(dev, m, n, d, p), 4 * m * d * (n + 1)
    for m, s, k, d in shapes["grad"]:
        yield "grad_norm_batch_max", f"M={m} S={s} K={k} D={d}, q=2", \
            lambda dev, m=m, s=s, k=k, d=d: _grad(dev, m, s, k, d), 4 * m * s * k * d
    for n, m, length in shapes["cov"]:
        yield "coverage_update", f"N={n} M={m} L={length}", \
            lambda dev, n=n, m=m, length=length: _cov(dev, n, m, length), 4 * n * m * length


def _ball(device, m, n, d, p):
    centers = torch.rand(m, d, device=device)
    return lambda: torch.ops.robustx.ball_sample(centers, n, 0.03, p, 0.0, 1.0, 0, 0)


def _grad(device, m, s, k, d):
    jac = torch.randn(m, s, k, d, device=device)
    targets = torch.arange(1, k, device=device).expand(m, k - 1).contiguous()
    source = torch.zeros(m, dtype=torch.int64, device=device)
    return lambda: torch.ops.robustx.grad_norm_batch_max(jac, source, targets, 2.0, min(s, 128), False)


def _cov(device, n, m, length):
    act = torch.randn(n, m, length, device=device).relu()
    low, high = torch.full((m,), 0.1, dtype=torch.float64, device=device), torch.full((m,), 1.0, dtype=torch.float64, device=device)
    states = [torch.zeros(m, 1000, dtype=torch.bool, device=device)]
    states += [torch.zeros(m, dtype=torch.bool, device=device) for _ in range(4)]
    return lambda: torch.ops.robustx.coverage_update(act, low, high, 1000, 0.5, 2, *states)


def step_ops(dry: bool) -> None:
    """Each compiled op's median time against bytes moved / measured copy bandwidth."""
    from bench_ops import measure

    from robustx import ops

    device = device_of(dry)
    bw = bandwidth(device, 2**26 if dry else 2**30)
    print(f"Copy bandwidth ({'64 MiB' if dry else '1 GiB'} tensor copy, read + write): {bw / 1e9:.1f} GB/s. "
          f"Ops from {ops.source()}. Floor = bytes moved (main input read + output written, float32) / that "
          "bandwidth; these ops do a few flops per byte, so the bandwidth floor is the binding one.\n")
    print("| op | case | ms | floor ms | time / floor | GB/s |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for op, label, make, n_bytes in op_cases(dry):
        seconds, _ = measure(make(device), device, 20, 2.0)
        floor = n_bytes / bw
        print(f"| {op} | {label} | {seconds * 1e3:.3f} | {floor * 1e3:.3f} | {seconds / floor:.2f} | "
              f"{n_bytes / seconds / 1e9:.1f} |", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def matmul_peak(device: torch.device, n: int) -> float:
    """float32 FLOP/s of an n x n matmul (default precision settings)."""
    from bench_ops import measure

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds, _ = measure(lambda: a @ b, device, 10, 2.0)
    return 2 * n**3 / seconds


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of the Conv2d and Linear layers for one input row."""
    total = [0.0]

    def hook(module, _inputs, out):
        fan_in = module.weight[0].numel()
        total[0] += 2.0 * out[0].numel() * fan_in

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total[0]


def step_resnet50(dry: bool) -> None:
    """CLEVER top-2 and coverage on ResNet-50 against the bare forward/backward and forward."""
    import bench_clever
    import bench_coverage
    import torchvision

    device = device_of(dry)
    torch.manual_seed(0)
    side, images, n_b, n_s, cov_n, cov_bs = (32, 1, 2, 2, 2, 2) if dry else (224, 2, 4, 1024, 256, 64)
    model, source = torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__}"
    model = model.to(device).eval()
    x = torch.rand(images, 3, side, side, device=device)
    rows = 2 if dry else bench_clever.auto_points(model, x)
    times, _ = bench_clever.compare(model, x, 2, 2.0, "top2", n_b, n_s, rows, 1 if dry else 2, (0.0, 1.0))
    t_c, t_f = times["clever"], times["new"]  # one target: the new floor is the old one
    fwd = forward_flops(model, x)
    floor_flops = 2 * fwd * images * n_b * n_s  # forward + input gradient (weights frozen) per row
    peak = matmul_peak(device, 256 if dry else 8192)
    print(f"Model: ResNet-50 from {source}, random weights, {side}x{side} inputs, {fwd / 1e9:.2f} GFLOP forward "
          f"per row (Conv2d + Linear). Matmul peak measured here: {peak / 1e12:.3g} TFLOP/s (float32 default precision, {256 if dry else 8192}^2).\n")
    print(f"CLEVER: {images} images, targeted top-2, L2 R = 2, N_b = {n_b}, N_s = {n_s}, {rows} rows per pass, "
          "best of the timed runs; floor = bench_clever.new_floor (only the forward/backward passes of the same rows).\n")
    print("| CLEVER s | floor s | CLEVER / floor | floor TFLOP/s (~2x forward per row) | floor / matmul peak |\n"
          "| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {t_c:.3f} | {t_f:.3f} | {t_c / t_f:.2f} | {floor_flops / t_f / 1e12:.3g} | {floor_flops / t_f / peak:.2f} |\n",
          flush=True)
    t = bench_coverage.bench(model, torch.rand(cov_n, 3, side, side), cov_bs, 1 if dry else 3, device)
    print(f"Coverage (NeuronCoverage.assess, six metrics, every Conv/Linear): {cov_n} inputs, batch {cov_bs}; "
          "bench_coverage.bench, best of the runs.\n")
    print("| neurons | forward ms | assess ms | reference ms | assess / forward | reference / assess |\n"
          "| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {t['neurons']} | {t['forward'] * 1e3:.0f} | {t['assess'] * 1e3:.0f} | {t['reference'] * 1e3:.0f} | "
          f"{t['assess'] / t['forward']:.3f} | {t['reference'] / t['assess']:.2f} |")


def step_art(dry: bool) -> None:
    """robustx.compat.art.clever_u against ART's clever_u on the CIFAR ResNet-20."""
    import numpy as np

    from robustx.data import aisafety_cifar10, aisafety_dir

    weights = aisafety_dir() / "resnet20_cifar.pt"
    try:
        from art.estimators.classification import PyTorchClassifier
        from art.metrics.metrics import clever_u as art_clever_u
    except ImportError as err:
        print(f"Skipped: ART is not installed ({err}).")
        return
    if not weights.is_file():
        print(f"Skipped: {weights} not found (set ROBUSTX_AISAFETY_DIR).")
        return
    from robustx.compat import art as rart
    from robustx.models import resnet20_cifar

    images, nb_batches, batch_size = (1, 2, 1) if dry else (2, 50, 100)
    clf = PyTorchClassifier(resnet20_cifar(weights), loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu" if dry else "gpu")
    x = aisafety_cifar10()[0][:images].numpy()
    print(f"CIFAR ResNet-20 (AISafety weights), untargeted, L2 R = 0.5, nb_batches {nb_batches}, batch_size "
          f"{batch_size}, np.random.seed(i) before each call; ours after one warm-up call.\n")
    print("| image | ART s | ours s | ART / ours | ART score | ours score | rel diff |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rart.clever_u(clf, x[0], nb_batches, batch_size, 0.5, 2, verbose=False)
    for i in range(images):
        scores, seconds = [], []
        for fn in (art_clever_u, rart.clever_u):
            np.random.seed(i)
            start = time.perf_counter()
            scores.append(fn(clf, x[i], nb_batches, batch_size, 0.5, 2, verbose=False))
            seconds.append(time.perf_counter() - start)
        print(f"| {i} | {seconds[0]:.2f} | {seconds[1]:.3f} | {seconds[0] / seconds[1]:.1f} | {scores[0]:.6g} | "
              f"{scores[1]:.6g} | {abs(scores[1] / scores[0] - 1):.1e} |", flush=True)


IN_PROCESS = {"ops": step_ops, "resnet50": step_resnet50, "art": step_art}


# ----------------------------------------------------------------------------- orchestration
def plan(dry: bool) -> list[tuple[str, list[str] | None, dict, int]]:
    """(title, argv or None when skipped, extra environment, timeout s) of every step."""
    py, me = sys.executable, str(Path(__file__).resolve().relative_to(ROOT))
    flag = ["--dry-run"] if dry else []
    build = None if dry else [py, "setup.py", "build_ext", "--inplace"]
    tests = ["tests/test_kernel_sim.py"] if dry else ["tests/gpu", "tests/test_kernel_sim.py"]
    return [
        ("Build with CUDA kernels", build, {"ROBUSTX_CUDA": "1", "MAX_JOBS": str(os.cpu_count())}, 240),
        ("Tests" + ("" if dry else " (tests/gpu, kernel simulation)"),
         [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], {}, 90),
        ("Operators against the bandwidth floor", [py, me, "--step", "ops", *flag], {}, 60),
        ("ResNet-50: CLEVER and coverage against forward/backward", [py, me, "--step", "resnet50", *flag], {}, 120),
        ("ART drop-in against ART on the CIFAR ResNet-20", [py, me, "--step", "art", *flag], {}, 90),
    ]


def run_step(argv: list[str], env: dict, timeout: float) -> tuple[str, str, str]:
    """Run argv in its own process group; (status, stdout, stderr). A step over its timeout
    is killed with its children and keeps the output it printed so far."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env},
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"TIMED OUT after {timeout:.0f} s"
        out.seek(0), err.seek(0)
        return status, out.read(), err.read()


def section(title: str, argv: list[str] | None, env: dict, timeout: float) -> str:
    """One markdown section: command, status, wall time and the step's output."""
    if argv is None:
        return f"## {title}\n\nSkipped: CUDA only (dry run).\n"
    command = " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(
        Path(a).name if a == sys.executable else a for a in argv)
    start = time.perf_counter()
    status, out, err = run_step(argv, env, timeout)
    lines = [f"## {title}", "", f"Command: `{command.strip()}`", "",
             f"Status: {status}, {time.perf_counter() - start:.1f} s (timeout {timeout:.0f} s).", ""]
    is_markdown = "--step" in argv
    lines += [out.strip()] if is_markdown else ["```", out.strip()[-TAIL:], "```"]
    if status != "ok" and err.strip():
        lines += ["", "stderr (tail):", "", "```", err.strip()[-TAIL:], "```"]
    return "\n".join(lines) + "\n"


def check(dry: bool, out: Path, budget: float) -> None:
    """Run every step within ``budget`` seconds and write the report to ``out``."""
    start = time.perf_counter()
    parts = [f"# robustx GPU check{' (dry run)' if dry else ''}", "",
             device_line(dry) + ".", "",
             f"Command: `bench/gpu_check.sh {'--dry-run ' if dry else ''}--out {out}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, budget {budget:.0f} s.", ""]
    for title, argv, env, timeout in plan(dry):
        left = budget - (time.perf_counter() - start)
        parts.append(section(title, argv, env, min(timeout, left)))
        print(parts[-1], flush=True)
    parts.append(f"Total: {time.perf_counter() - start:.1f} s.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"wrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no CUDA-only steps")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check.md")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all steps (default 450)")
    parser.add_argument("--step", choices=sorted(IN_PROCESS), help="run one step here and print its markdown")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROBUSTX_NO_PROGRESS", "1")
    if args.step:
        torch.set_num_threads(1)  # CPU steps (dry run): no oversubscription of shared cores
        IN_PROCESS[args.step](args.dry_run)
    else:
        check(args.dry_run, args.out, args.budget)


if __name__ == "__main__":
    main()
