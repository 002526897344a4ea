"""Throughput of robustx.clever against the bare floor, and a markdown section for
bench/RESULTS.md.

The bare floor is a plain PyTorch loop doing only the forward/backward passes CLEVER
needs for the same samples and targets: every pass takes the same rows (samples
replicated once per target) and backpropagates sum_rows (f_c - f_j) to the input.
robustx.clever adds the ball sampling, the dual-norm batch maxima and the Weibull fits.
Ratio = CLEVER time / floor time (aim: <= 1.3). Both run with the paper's N_s = 1024
samples per batch; N_b is reduced on CPU (throughput per sample does not depend on it)
and reported extrapolated to the paper's N_b = 500.

    python bench/bench_clever.py [--n-batches 10] [--repeats 3] [--append bench/RESULTS.md]

On a machine with CUDA a second section times ResNet-50 at 224x224 (random weights,
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_rows(model, x):
    """The rows per pass robustx.clever picks by default (max_chunk=None)."""
    with frozen_eval(model):
        return sys.modules["robustx.clever"]._auto_chunk(model, x[:1])


def floor(model, x, targets, n_samples, rows_per_pass):
    """Forward/backward of g = f_c - f_j for n_samples points x len(targets) targets per image."""
    device = x.device
    t = targets.shape[1]
    n_pts = max(1, rows_per_pass // t)
    with frozen_eval(model):
        c = model(x).argmax(1)
        for i in range(x.shape[0]):
            base = x[i : i + 1].expand(n_pts * t, *x.shape[1:])
            for start in range(0, n_samples, n_pts):
                s = min(n_pts, n_samples - start)
                rows = base[: s * t].clone().requires_grad_(True)
                out = model(rows).view(s, t, -1)
                g = out[:, :, c[i]] - out.gather(2, targets[i].view(1, t, 1).expand(s, t, 1)).squeeze(2)
                torch.autograd.grad(g.sum(), rows)
    sync(device)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(model, x, norm, radius, targets, n_batches, n_samples, rows, repeats, clip):
    """Best-of-``repeats`` times of clever and of the floor, measured alternately."""
    device = x.device
    kw = dict(norm=norm, radius=radius, n_batches=n_batches, n_samples=n_samples, targets=targets,
              clip_values=clip, max_chunk=rows, on_fallback="max", progress=False)  # the floor's rows, no resampling

    def run_clever():
        res = clever(model, x, **kw)
        sync(device)
        return res

    res = run_clever()  # warm-up
    t_targets = res.targets.to(device)
    floor(model, x, t_targets, n_batches * n_samples, rows)
    t_c, t_f = [], []
    for _ in range(repeats):
        t_c.append(timed(run_clever)[0])
        t_f.append(timed(lambda: floor(model, x, t_targets, n_batches * n_samples, rows))[0])
    return min(t_c), min(t_f), res


def parts(x, res, norm, radius, n_batches, n_samples, rows, clip):
    """Standalone time of CLEVER's own work for the same passes: sampling, reduction, fits."""
    mod = sys.modules["robustx.clever"]
    n, t = res.targets.shape
    m, b, g = mod._pass_sizes(t, n_batches, n_samples, rows)
    ball = mod._Ball(norm, radius, clip, 0, n_batches, n_samples)
    work = [(im, bs) for im in chunks(n, m) for bs in chunks(n_batches, b)]
    t_sample = timed(lambda: [ball.points(x, im, bs) for im, bs in work])[0]
    m = min(m, n)
    jac = torch.randn(m, b * n_samples, g, x[0].numel(), device=x.device)
    pick = torch.arange(g, device=x.device).expand(m, g)
    calls = len(work) * -(-t // g)
    t_reduce = timed(lambda: [ops.grad_norm_batch_max(jac, pick, q=ops.dual_norm(norm), batch_size=n_samples,
                                                      return_norms=True) for _ in range(calls)])[0]
    maxima = torch.rand(n * t, n_batches, dtype=torch.float64) + 1.0
    t_fit = timed(lambda: fit_reverse_weibull(maxima))[0]
    return t_sample, t_reduce, t_fit


def digits_section(lines, args):
    torch.manual_seed(0)
    model = digits_cnn()
    x = digits("test")[0][: args.images]
    rows = args.rows or auto_rows(model, x)
    lines += [f"### Digits CNN (CPU, {torch.get_num_threads()} threads), untargeted (9 targets)", "",
              f"{args.images} image(s), N_s = {PAPER_SAMPLES}, N_b = {args.n_batches} (paper: {PAPER_BATCHES}), "
              f"{rows} rows (samples x targets) per forward/backward in both loops, best of {args.repeats}.", "",
              "| norm | CLEVER s | floor s | ratio | s per image at N_b = 500 | sampling s | norms+maxima s | "
              "Weibull fits s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for norm, radius in ((2, 2.0), ("inf", 0.3)):
        t_c, t_f, res = compare(model, x, norm, radius, "untargeted", args.n_batches, PAPER_SAMPLES, rows,
                                args.repeats, (0.0, 1.0))
        t_s, t_r, t_w = parts(x, res, ops.parse_norm(norm), radius, args.n_batches, PAPER_SAMPLES, rows,
                              (0.0, 1.0))
        per_image = t_c / args.images * PAPER_BATCHES / args.n_batches
        lines.append(f"| {norm} | {t_c:.2f} | {t_f:.2f} | {t_c / t_f:.2f} | {per_image:.0f} | {t_s:.3f} | "
                     f"{t_r:.3f} | {t_w:.3f} |")
    lines.append("")


def cifar_section(lines, args):
    """CIFAR ResNet-20 (AISafety weights) on the CPU, targeted top-2 L2 (one target per image)."""
    weights = aisafety_dir() / "resnet20_cifar.pt"
    if not weights.is_file():
        lines += [f"### CIFAR ResNet-20 (CPU): skipped, {weights} not found.", ""]
        return
    model = resnet20_cifar(weights)
    x = aisafety_cifar10()[0][: args.images]
    rows = args.rows or auto_rows(model, x)
    t_c, t_f, _ = compare(model, x, 2, 0.5, "top2", args.cifar_batches, PAPER_SAMPLES, rows, args.repeats,
                          (0.0, 1.0))
    per_image = t_c / args.images * PAPER_BATCHES / args.cifar_batches
    lines += [f"### CIFAR ResNet-20 (AISafety weights, CPU, {torch.get_num_threads()} threads), targeted top-2, L2 R = 0.5",
              "", f"{args.images} image(s), N_s = {PAPER_SAMPLES}, N_b = {args.cifar_batches}, {rows} rows per "
              f"forward/backward in both loops, best of {args.repeats}.", "",
              "| CLEVER s | floor s | ratio | s per image at N_b = 500 |", "| --- | --- | --- | --- |",
              f"| {t_c:.2f} | {t_f:.2f} | {t_c / t_f:.2f} | {per_image:.0f} |", ""]


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
    rows = args.gpu_rows or auto_rows(model, x)
    t_c, t_f, res = compare(model, x, 2, 2.0, "top2", args.gpu_batches, PAPER_SAMPLES, rows, args.repeats, (0.0, 1.0))
    per_image = t_c / args.gpu_images * PAPER_BATCHES / args.gpu_batches
    samples_per_s = args.gpu_images * args.gpu_batches * PAPER_SAMPLES / t_c
    lines += [f"### ResNet-50 224x224, 1000 classes, random weights ({torch.cuda.get_device_name(device)})", "",
              f"{args.gpu_images} images, targeted top-2, L2 R = 2, N_s = 1024, N_b = {args.gpu_batches}, "
              f"{rows} rows per pass, best of {args.repeats}.", "",
              "| CLEVER s | floor s | ratio | samples/s | images/s at 500 x 1024 |", "| --- | --- | --- | --- | --- |",
              f"| {t_c:.2f} | {t_f:.2f} | {t_c / t_f:.2f} | {samples_per_s:.0f} | {1 / per_image:.4f} |", ""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--n-batches", type=int, default=10, help="N_b on CPU (default %(default)s)")
    parser.add_argument("--rows", type=int, default=None, help="rows per pass (default: robustx.clever's automatic choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-digits", action="store_true", help="skip the digits CNN section")
    parser.add_argument("--cifar-batches", type=int, default=4, help="N_b for the CIFAR ResNet-20 (default %(default)s)")
    parser.add_argument("--gpu-images", type=int, default=2)
    parser.add_argument("--gpu-batches", type=int, default=10)
    parser.add_argument("--gpu-rows", type=int, default=None, help="default: robustx.clever's automatic choice")
    parser.add_argument("--append", help="append the markdown section to this file (one write)")
    args = parser.parse_args()
    command = "python bench/bench_clever.py " + " ".join(sys.argv[1:])
    lines = ["", "## CLEVER throughput vs the bare forward/backward floor (bench/bench_clever.py)", "",
             f"Command: `{command.strip()}` (torch {torch.__version__}, compiled ops: {ops.compiled()}). "
             "Ratio = robustx.clever time / plain PyTorch loop doing only the forward/backward passes for the "
             "same samples and targets.", ""]
    if not args.no_digits:
        digits_section(lines, args)
    cifar_section(lines, args)
    resnet50_section(lines, args)
    section = "\n".join(lines)
    print(section)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
