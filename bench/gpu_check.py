"""One-command GPU check, sized for one call of at most 8 minutes on one GPU: build the
CUDA kernels for this GPU's architecture only, time the operators against their
memory-bandwidth floors (the key numbers, first), run tests/gpu, then CLEVER and coverage
on a 224x224 ResNet-50 against its bare forward/backward, and the ART drop-in against ART
on the CIFAR ResNet-20 (skipped where ART is absent). Results: ONE markdown report, plus
one log per step and the tests' junit XML beside it (at most 8 files; in $OUT when set).

    bench/gpu_check.sh [--dry-run] [--out FILE] [--budget SECONDS]

Every step runs in its own process with its own timeout (cut to what is left of
--budget, default 450 s); a failing or hanging step is recorded and the next one runs;
the tests get SIGINT before they are killed, so pytest still prints its summary. No pip:
the build is setup.py against the installed torch. --dry-run does the same on the CPU at
tiny sizes and skips the CUDA build (tests/gpu skip there). ``--step NAME`` runs one step
in-process and prints its markdown.
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
GPU_TESTS = "tests/gpu"  # the kernel simulation (tests/ops/test_kernel_sim.py) is CPU-only: not run here
INTERRUPT_GRACE = 20  # seconds between a step's SIGINT and its SIGKILL (pytest prints its summary)
MAX_FILES = 8  # result files one check writes: the report and one log per step (+ the tests' junit XML)


def cuda_home() -> str | None:
    """$CUDA_HOME, else the toolkit folder nvcc reports (the TOP of ``nvcc --dryrun``: the nvcc
    on the PATH may be a wrapper outside the toolkit), else torch's guess."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    try:
        dry = subprocess.run(["nvcc", "--dryrun", "x.cu"], capture_output=True, text=True, timeout=30)
        top = [line.split("=", 1)[1] for line in (dry.stdout + dry.stderr).splitlines() if line.startswith("#$ TOP=")]
        if top:
            return str(Path(top[0]).resolve())
    except (OSError, subprocess.TimeoutExpired):
        pass
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME


def arch_list(capability: tuple[int, int]) -> str:
    """TORCH_CUDA_ARCH_LIST for the present GPU only (9.0 on an H100 or H200)."""
    return f"{capability[0]}.{capability[1]}"


def pytest_workers(dry: bool) -> list[str]:
    """xdist arguments when pytest-xdist is installed (none in a dry run: its tests all skip)."""
    import importlib.util

    if dry or importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]


def plan(dry: bool, out_dir: Path, capability: tuple[int, int] | None = None):
    """(title, log name, argv or None when skipped, extra environment, timeout s, SIGINT grace s)
    of every step, the key numbers first: build, op timings, GPU tests, ResNet-50, ART."""
    py, me = sys.executable, str(Path(__file__).resolve().relative_to(ROOT))
    flag = ["--dry-run"] if dry else []
    build, build_env = None, {}
    if not dry:
        build = ["bash", "-c", f"{py} setup.py -q build_ext --inplace && {py} -m robustx.ops.kernels --require CPU --require CUDA"]
        build_env = {"ROBUSTX_CUDA": "1", "MAX_JOBS": str(os.cpu_count()), "TORCH_CUDA_ARCH_LIST": arch_list(capability)}
        home = cuda_home()
        if home:
            build_env["CUDA_HOME"] = home
    tests = [py, "-m", "pytest", "-q", "-rfE", "--durations=15", "-p", "no:cacheprovider", *pytest_workers(dry),
             f"--junitxml={out_dir / 'tests.xml'}", GPU_TESTS]
    slack = 2 if dry else 1  # a dry run shares a busy CPU: twice the time per step
    steps = [
        ("Build with CUDA kernels", "build.log", build, build_env, 150, 0),
        ("Operators against the bandwidth floor", "ops.log", [py, me, "--step", "ops", *flag], {}, 45, 0),
        (f"Tests ({GPU_TESTS})", "tests.log", tests, {}, 150, INTERRUPT_GRACE),
        ("ResNet-50: CLEVER and coverage against forward/backward", "resnet50.log",
         [py, me, "--step", "resnet50", *flag], {}, 75, 0),
        ("ART drop-in against ART on the CIFAR ResNet-20", "art.log", [py, me, "--step", "art", *flag], {}, 30, 0),
    ]
    return [(title, log, argv, env, slack * timeout, grace) for title, log, argv, env, timeout, grace in steps]


def run_step(argv: list[str], env: dict, timeout: float, grace: float = 0) -> tuple[str, str, str]:
    """Run argv in its own process group; (status, stdout, stderr). A step over its timeout
    first gets SIGINT (when ``grace`` > 0: pytest then prints its summary) ``grace`` seconds
    before the end, then is killed with its children; it keeps the output it printed."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": path, **env},
                                start_new_session=True)
        timeout = max(timeout, 1)
        grace = min(grace, timeout / 2)
        try:
            rc = proc.wait(timeout=timeout - grace)
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"TIMED OUT after {timeout:.0f} s"
            if grace > 0:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=grace)
                    status += " (interrupted: SIGINT)"
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0), err.seek(0)
        return status, out.read(), err.read()


def section(title: str, log: Path, argv: list[str] | None, env: dict, timeout: float, grace: float) -> str:
    """One markdown section: command, status, wall time and the step's output; the step's
    whole stdout and stderr go to ``log``."""
    if argv is None:
        return f"## {title}\n\nSkipped: CUDA only (dry run).\n"
    command = " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(
        Path(a).name if a == sys.executable else a for a in argv)
    start = time.perf_counter()
    status, out, err = run_step(argv, env, timeout, grace)
    log.write_text(f"$ {command.strip()}\n{status}\n\n--- stdout\n{out}\n--- stderr\n{err}")
    lines = [f"## {title}", "", f"Command: `{command.strip()}`", "",
             f"Status: {status}, {time.perf_counter() - start:.1f} s (timeout {timeout:.0f} s). Full output: {log.name}.", ""]
    is_markdown = "--step" in argv
    lines += [out.strip()] if is_markdown else ["```", out.strip()[-TAIL:], "```"]
    if status != "ok" and err.strip():
        lines += ["", "stderr (tail):", "", "```", err.strip()[-TAIL:], "```"]
    return "\n".join(lines) + "\n"


def check(dry: bool, out: Path, budget: float) -> None:
    """Run every step within ``budget`` seconds; the report ``out`` is rewritten after each
    step (a cut-off run keeps what it measured), the logs lie beside it."""
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    capability = None if dry or not torch.cuda.is_available() else torch.cuda.get_device_capability(0)
    head = [f"# robustx GPU check{' (dry run)' if dry else ''}", "", device_line(dry) + ".", "",
            f"Command: `bench/gpu_check.sh {'--dry-run ' if dry else ''}--out {out}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, budget {budget:.0f} s"
            + (f", built for sm_{capability[0]}{capability[1]} only" if capability else "") + ".", ""]
    parts = list(head)
    if not dry and capability is None:
        parts.append("No CUDA device: nothing to check (run with --dry-run on a CPU).\n")
        out.write_text("\n".join(parts))
        print("\n".join(parts))
        raise SystemExit(1)
    for title, log, argv, env, timeout, grace in plan(dry, out.parent, capability):
        left = budget - (time.perf_counter() - start)
        parts.append(section(title, out.parent / log, argv, env, min(timeout, left), grace))
        out.write_text("\n".join(parts))
        print(parts[-1], flush=True)
    parts.append(f"Total: {time.perf_counter() - start:.1f} s.\n")
    out.write_text("\n".join(parts))
    print(f"wrote {out} and its logs")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no CUDA-only steps")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "out"
    parser.add_argument("--out", type=Path, default=out_dir / "gpu_check.md",
                        help="the report; the step logs go beside it (default $OUT/gpu_check.md, else bench/out/)")
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
