"""Throughput of robustx.clever against two bare floors, and a markdown section for
bench/RESULTS.md.

Both floors are plain PyTorch loops doing only the passes through the model, for the same
samples and targets, and backpropagating g = f_c - f_j to the input:

- old floor (separate rows): one forward and one backward pass per (point, target) row,
  the points replicated once per target;
- new floor (shared forward): one forward pass per point and one backward pass per (point,
  target) from it, the graph retained.

Both pass as many rows per forward as robustx.clever passes points (its automatic choice,
or ``--rows``), so the ratio of the floors is the gain of sharing the forward pass alone.

The new floor is what the estimator with shared target samples cannot avoid; robustx.clever
adds the ball sampling, the dual-norm batch maxima and the Weibull fits. Ratios = CLEVER
time / floor time. Both use the paper's N_s = 1024 samples per batch; N_b is reduced on CPU
(throughput per sample does not depend on it) and reported extrapolated to the paper's
N_b = 500. ``--clock process`` times CPU seconds of this process instead of wall seconds
(steadier on a machine shared with other jobs; use with ``--threads 1``).

    python bench/bench_clever.py [--n-batches 10] [--repeats 3] [--append bench/RESULTS.md]

On a machine with CUDA a last section times ResNet-50 at 224x224 (random weights,
torchvision; skipped without it), targeted top-2 CLEVER L2 as in the paper's ImageNet runs.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


from robustx import ops
from robustx.clever import clever
from robustx.data import aisafety_cifar10, aisafety_dir, digits
from robustx.models import digits_cnn, resnet20_cifar
from robustx.modelutil import chunks, frozen_eval
from robustx.weibull import fit_reverse_weibull

PAPER_BATCHES, PAPER_SAMPLES = 500, 1024
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clever_module():
    return sys.modules["robustx.clever"]


def auto_points(model, x):
    """The points per forward pass robustx.clever picks by default (batch_size=None)."""
    with frozen_eval(model):
        return clever_module()._auto_chunk(model, x[:1])


def cotangents(c, targets, rows, k):
    """(T, rows, K) one-hot differences e_c - e_j: backpropagated from the logits they give
    the gradient of g = f_c - f_j of each row, with nothing between the model and autograd."""
    t = targets.numel()
    v = torch.zeros(t, rows, k, device=targets.device)
    v[:, :, c] = 1.0
    v[torch.arange(t), :, targets] -= 1.0
    return v


def old_floor(model, x, targets, n_samples, rows_per_pass):
    """Forward and backward per (point, target) row: n_samples points x T targets per image."""
    t = targets.shape[1]
    n_pts = max(1, rows_per_pass // t)
    with frozen_eval(model):
        logits = model(x)
        c = logits.argmax(1)
        for i in range(x.shape[0]):
            base = x[i : i + 1].expand(n_pts * t, *x.shape[1:])
            v = cotangents(c[i], targets[i], n_pts, logits.shape[1]).transpose(0, 1).reshape(n_pts * t, -1)  # row = (point, target)
            for start in range(0, n_samples, n_pts):
                s = min(n_pts, n_samples - start)
                rows = base[: s * t].clone().requires_grad_(True)
                torch.autograd.grad(model(rows), rows, v[: s * t])
    sync(x.device)


def new_floor(model, x, targets, n_samples, points):
    """One forward per point, one backward per (point, target): n_samples points per image."""
    t = targets.shape[1]
    with frozen_eval(model):
        logits = model(x)
        c = logits.argmax(1)
        for i in range(x.shape[0]):
            base = x[i : i + 1].expand(points, *x.shape[1:])
            v = cotangents(c[i], targets[i], points, logits.shape[1])
            for start in range(0, n_samples, points):
                rows = base[: min(points, n_samples - start)].clone().requires_grad_(True)
                out = model(rows)
                for k in range(t):
                    torch.autograd.grad(out, rows, v[k, : rows.shape[0]], retain_graph=k < t - 1)
    sync(x.device)


def timed(fn):
    start = clock()
    out = fn()
    return clock() - start, out


def compare(model, x, norm, radius, targets, n_batches, n_samples, points, repeats, clip):
    """Best-of-``repeats`` times of clever, the old floor and the new floor, measured in turn."""
    device = x.device
    kw = dict(norm=norm, radius=radius, n_batches=n_batches, n_samples=n_samples, targets=targets,
              clip_values=clip, batch_size=points, on_fallback="max", progress=False)  # no resampling

    def run_clever():
        res = clever(model, x, **kw)
        sync(device)
        return res

    res = run_clever()  # warm-up
    tgt = res.targets.to(device)
    n = n_batches * n_samples
    runs = {"clever": run_clever, "old": lambda: old_floor(model, x, tgt, n, points),
            "new": lambda: new_floor(model, x, tgt, n, points)}
    runs["old"](), runs["new"]()
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn)[0])
    return {k: min(v) for k, v in times.items()}, res


def parts(x, res, norm, radius, n_batches, n_samples, points, clip):
    """Standalone time of CLEVER's own work for the same passes: sampling, reduction, fits."""
    mod = clever_module()
    n, t = res.targets.shape
    m, b, g = mod._pass_sizes(t, n_batches, n_samples, mod._gradient_rows(x[:1]))
    ball = mod._Ball(norm, radius, clip, 0, n_batches, n_samples)
    work = [(im, bs) for im in chunks(n, m) for bs in chunks(n_batches, b)]
    t_sample = timed(lambda: [ball.points(x, im, bs, 0) for im, bs in work])[0]
    m = min(m, n)
    jac = torch.randn(m, b * n_samples, g, x[0].numel(), device=x.device)
    pick = torch.arange(g, device=x.device).expand(m, g)
    calls = len(work) * -(-t // g)
    t_reduce = timed(lambda: [ops.grad_norm_batch_max(jac, pick, q=ops.dual_norm(norm), batch_size=n_samples,
                                                      return_norms=True) for _ in range(calls)])[0]
    maxima = torch.rand(n * t, n_batches, dtype=torch.float64) + 1.0
    t_fit = timed(lambda: fit_reverse_weibull(maxima))[0]
    return t_sample, t_reduce, t_fit


TABLE = ["| targets | norm | CLEVER s | old floor s | new floor s | CLEVER / old floor | CLEVER / new floor | "
         "s per image at N_b = 500 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]


def row(targets, norm, times, images, n_batches):
    per_image = times["clever"] / images * PAPER_BATCHES / n_batches
    return (f"| {targets} | {norm} | {times['clever']:.2f} | {times['old']:.2f} | {times['new']:.2f} | "
            f"{times['clever'] / times['old']:.2f} | {times['clever'] / times['new']:.2f} | {per_image:.0f} |")


def setup_line(args, n_batches, points):
    return (f"{args.images} image(s), N_s = {PAPER_SAMPLES}, N_b = {n_batches} (paper: {PAPER_BATCHES}), "
            f"{points} points (CLEVER, new floor) or rows (old floor) per forward, best of {args.repeats}, "
            f"{args.clock} seconds.")


def digits_section(lines, args):
    torch.manual_seed(0)
    model = digits_cnn()
    x = digits("test")[0][: args.images]
    points = args.rows or auto_points(model, x)
    lines += [f"### Digits CNN (CPU, {torch.get_num_threads()} threads)", "", setup_line(args, args.n_batches, points),
              "", *TABLE]
    own = []
    for targets, norm, radius in (("untargeted", 2, 2.0), ("untargeted", "inf", 0.3), ("top2", 2, 2.0)):
        times, res = compare(model, x, norm, radius, targets, args.n_batches, PAPER_SAMPLES, points,
                             args.repeats, (0.0, 1.0))
        lines.append(row(targets, norm, times, args.images, args.n_batches))
        if targets == "untargeted":
            t_s, t_r, t_w = parts(x, res, ops.parse_norm(norm), radius, args.n_batches, PAPER_SAMPLES, points,
                                  (0.0, 1.0))
            own.append(f"{norm}: sampling {t_s:.3f} s, norms + maxima {t_r:.3f} s, Weibull fits {t_w:.3f} s")
    lines += ["", "CLEVER's own work, timed standalone for the untargeted passes: " + "; ".join(own) + ".", ""]


def cifar_section(lines, args):
    """CIFAR ResNet-20 (AISafety weights) on the CPU, L2 R = 0.5: untargeted and top-2."""
    weights = aisafety_dir() / "resnet20_cifar.pt"
    if not weights.is_file():
        lines += [f"### CIFAR ResNet-20 (CPU): skipped, {weights} not found.", ""]
        return
    model = resnet20_cifar(weights)
    x = aisafety_cifar10()[0][: args.images]
    points = args.rows or auto_points(model, x)
    lines += [f"### CIFAR ResNet-20 (AISafety weights, CPU, {torch.get_num_threads()} threads), L2 R = 0.5", "",
              setup_line(args, args.cifar_batches, points), "", *TABLE]
    for targets in args.cifar_targets.split(","):
        times, _ = compare(model, x, 2, 0.5, targets, args.cifar_batches, PAPER_SAMPLES, points,
                           args.repeats, (0.0, 1.0))
        lines.append(row(targets, 2, times, args.images, args.cifar_batches))
    lines.append("")


def resnet50_section(lines, args):
    if not torch.cuda.is_available():
        lines += ["### ResNet-50 224x224 (GPU): skipped, CUDA not available on this machine.", ""]
        return
    try:
        import torchvision
    except ImportError:
        lines += ["### ResNet-50 224x224 (GPU): skipped, torchvision not importable.", ""]
        return
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device).eval()
    x = torch.rand(args.gpu_images, 3, 224, 224, device=device)
    points = args.gpu_rows or auto_points(model, x)
    times, _ = compare(model, x, 2, 2.0, "top2", args.gpu_batches, PAPER_SAMPLES, points, args.repeats, (0.0, 1.0))
    samples_per_s = args.gpu_images * args.gpu_batches * PAPER_SAMPLES / times["clever"]
    lines += [f"### ResNet-50 224x224, 1000 classes, random weights ({torch.cuda.get_device_name(device)})", "",
              f"{args.gpu_images} images, L2 R = 2, N_s = 1024, N_b = {args.gpu_batches}, {points} points per "
              f"forward, best of {args.repeats}; {samples_per_s:.0f} samples/s.", "", *TABLE,
              row("top2", 2, times, args.gpu_images, args.gpu_batches), ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--n-batches", type=int, default=10, help="N_b on CPU (default %(default)s)")
    parser.add_argument("--rows", type=int, default=None,
                        help="points (CLEVER, new floor) or rows (old floor) per forward (default: "
                             "robustx.clever's automatic choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-digits", action="store_true", help="skip the digits CNN section")
    parser.add_argument("--cifar-batches", type=int, default=4, help="N_b for the CIFAR ResNet-20 (default %(default)s)")
    parser.add_argument("--cifar-targets", default="untargeted,top2", help="comma-separated (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--gpu-images", type=int, default=2)
    parser.add_argument("--gpu-batches", type=int, default=10)
    parser.add_argument("--gpu-rows", type=int, default=None, help="default: robustx.clever's automatic choice")
    parser.add_argument("--append", help="append the markdown section to this file (one write)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python bench/bench_clever.py " + " ".join(sys.argv[1:])
    lines = ["", "## CLEVER throughput vs the old and the new floor (bench/bench_clever.py)", "",
             f"Command: `{command.strip()}` (torch {torch.__version__}, compiled ops: {ops.compiled()}). "
             "Old floor = a forward and a backward pass per (point, target) row; new floor = one forward "
             "pass per point and one backward pass per (point, target); ratio = robustx.clever time / floor time.",
             ""]
    print("\n".join(lines), flush=True)
    for section, skip in ((digits_section, args.no_digits), (cifar_section, False), (resnet50_section, False)):
        if not skip:
            first = len(lines)
            section(lines, args)
            print("\n".join(lines[first:]), flush=True)  # as each section finishes
    section = "\n".join(lines)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
