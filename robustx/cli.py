"""The ``robustx`` command line: one small function per subcommand.

Every subcommand's parser lives here. Add one by writing ``_add_<name>(subparsers)`` (its
arguments, then ``_add_output(parser, default_out, _run_<name>)``) and a
``_run_<name>(args)`` that calls the library with plain arguments and returns an exit
status, and listing ``_add_<name>`` in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable, List, Optional


def _add_output(parser: argparse.ArgumentParser, out: str, run: Callable[[argparse.Namespace], int]) -> None:
    """The options every subcommand has (--out, --no-progress) and its runner."""
    parser.add_argument("--out", default=out, help="output folder (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="the whole evaluation suite on one model: report.json, report.html, store.sqlite",
        description="Evaluate a model with every metric of the suite (or --metrics) and write DIR/report.json, "
        "DIR/report.html and DIR/store.sqlite; --resume continues a killed run.",
    )
    _add_run_options(p, "out/evaluate")
    p.add_argument("--model", required=True, help="digits (also digits-seed1, digits-pgd), resnet20, module:factory "
                   "(e.g. torchvision.models:resnet50, timm:create_model; a module in the working directory works), "
                   "or the path of a TorchScript file or a .pt2 exported program")
    p.add_argument("--model-args", default=None, help="keyword arguments of a module:factory as a JSON object, "
                   "e.g. '{\"model_name\": \"resnet18\", \"num_classes\": 10}'")
    p.add_argument("--weights", default=None, help="checkpoint for the model: a state dict (also nested under "
                   "state_dict / model / model_state_dict / ema, keys prefixed module. or _orig_mod.) or .safetensors "
                   "(default: its shipped weights)")
    for role, metrics in ROLES.items():
        p.add_argument(f"--{role}", default=None, help=f"the {role} model ({metrics}), given like --model")
        p.add_argument(f"--{role}-weights", default=None, help=f"checkpoint for --{role}, as --weights")
        p.add_argument(f"--{role}-args", default=None, help=f"keyword arguments of a --{role} factory, as --model-args")
    p.add_argument("--normalize", choices=("imagenet",), default=None, help="wrap the models so they see inputs "
                   "normalised with the ImageNet mean and std (the data itself stays in --clip-values)")
    p.add_argument("--mean", type=_floats, default=None, help="per-channel mean the models' inputs are normalised "
                   "with, e.g. 0.4914,0.4822,0.4465 (with --std)")
    p.add_argument("--std", type=_floats, default=None, help="per-channel standard deviation (with --mean)")
    p.add_argument("--clip-values", type=_floats, default=(0.0, 1.0), metavar="LO,HI", help="the data domain: "
                   "inputs lie in [LO, HI], attacks stay in it (default 0,1)")
    p.add_argument("--data", default=None, help="digits, cifar100, an ImageNet-style folder (one subfolder per "
                   "class, .jpg/.jpeg/.png) or a .npz (x, y) / .npy (x) file (default: a built-in model's own test set)")
    p.add_argument("--labels", choices=("predicted",), default=None, help="predicted: a .npy file's labels are the "
                   "model's own predictions (CA is then 1)")
    p.add_argument("--profile", default=None, help="inputs whose neuron ranges KMNC / NBC / SNAC use (e.g. training "
                   "data), given like --data (default: the digits training split for --data digits, else none)")
    p.add_argument("-n", "--n", type=int, default=None, help="evaluate the first N inputs (a folder: N spread "
                   "evenly over it; default: all; under torchrun write -n N: torchrun takes --n for its own options)")
    p.add_argument("--workers", type=int, default=2, help="processes decoding a folder's images ahead of the batch "
                   "being evaluated (default %(default)s)")
    p.add_argument("--save-adversarial", choices=("float32", "float16"), default=None, help="keep every attack's "
                   "examples in the store (4 or 2 bytes per input element) so a later --resume adding a metric "
                   "reuses them; default: the store keeps only the metrics' small per-batch states")
    p.add_argument("--resize", type=int, default=256, help="a folder's images: shorter side resized to this "
                   "(default %(default)s)")
    p.add_argument("--crop", type=int, default=224, help="a folder's images: center crop size (default %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last memory format "
                   "for the forward passes that give logits (not attacks, not CLEVER's gradients)")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="torch.autocast for the forward "
                   "passes that give logits (not attacks, not CLEVER's gradients)")


#: the models besides --model a run can take, and the metrics each one enables
ROLES = {"defended": "CAV, CRR, CSR, CCV, COS", "surrogate": "AA_B: transferred attack",
         "baseline": "mCE, rmCE normalised by it"}


def _floats(value: str):
    """Comma-separated numbers, e.g. ``0,1`` or ``0.485,0.456,0.406``."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {value!r}") from None


def _add_run_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--metrics", default="all", help="comma-separated metric names (robustx metrics), or all")
    p.add_argument("--attacks", default=None, help="comma-separated attacks: fgsm, pgd, deepfool, cw, autoattack "
                   "(the field's reference, pip install pyautoattack; default: pgd)")
    p.add_argument("--minimal-attack", default="deepfool", help="the minimal-perturbation attack whose successful "
                   "examples ALD, ASS, PSD, ACAC, ACTC and NTE average over: deepfool (default), cw, or one of "
                   "--attacks; its settings: the --config table of its name")
    p.add_argument("--config", default=None, help="TOML file: one table per metric or attack, e.g. [clever]")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default %(default)s)")
    p.add_argument("--device", default=None, help="torch device the model is moved to (default: the model's)")
    p.add_argument("--batch-size", type=_batch_size, default=256, help="inputs per batch and unit, or auto: the "
                   "largest power of two whose activations fit a quarter of free GPU memory or 1 GiB on a CPU "
                   "(default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    _add_output(p, out, _run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from robustx import checks
    from robustx.pipeline import distributed, sources
    from robustx.pipeline.evaluate import evaluate

    if args.device is not None:
        checks.device(args.device, name="--device")  # before any work: the device exists here
    clip = checks.clip_range(args.clip_values, "--clip-values")
    distributed.init_from_env()  # under torchrun: one process per device, inputs sharded by rank
    rank = distributed.world()[0]
    normalization = dict(normalize=args.normalize, mean=args.mean, std=args.std)
    model = sources.load_model(args.model, args.weights, args=sources.model_args(args.model_args), **normalization)
    others = _role_models(args, normalization)
    data = args.data or sources.default_data(args.model)
    inputs = sources.load_data(data, model, args.n, resize=args.resize, crop=args.crop, labels=args.labels,
                               clip_values=clip)
    profile = (sources.load_profile(args.profile, clip, workers=args.workers, resize=args.resize, crop=args.crop)
               if args.profile else sources.default_profile(data))
    device = args.device or _local_device()
    if device is not None:
        for net in (model, *others.values()):
            net.to(device)
    batch_size = args.batch_size
    if batch_size == "auto":  # rank 0's measure, so every rank runs the same batches
        from robustx.pipeline.batchsize import auto_batch_size

        first = inputs[0][:1] if isinstance(inputs, tuple) else inputs[0][0][None]
        batch_size = distributed.gather_in_order({0: auto_batch_size(model, first, device)} if rank == 0 else {})[0]
    with _failures_summarised():
        report = evaluate(model, inputs, metrics=args.metrics, attacks=args.attacks, config=_read_config(args.config),
                          minimal_attack=args.minimal_attack,
                          profile=profile, out=args.out, resume=args.resume, seed=args.seed, device=device,
                          batch_size=batch_size, clip_values=clip, progress=not args.no_progress and rank == 0,
                          name=args.model, channels_last=args.channels_last, autocast=args.autocast,
                          workers=args.workers, save_adversarial=args.save_adversarial, _resume_hint="--resume",
                          **others)
    if rank == 0:
        print(_summary(report))
        print(f"wrote {args.out}/report.json, report.html, report.csv and store.sqlite")
    return _failures(report, "evaluate")


def _role_models(args: argparse.Namespace, normalization: dict) -> dict:
    """The --defended / --surrogate / --baseline models given, by role."""
    from robustx.pipeline import sources

    models = {}
    for role in ROLES:
        spec, weights, factory_args = (getattr(args, f"{role}{suffix}") for suffix in ("", "_weights", "_args"))
        if spec is None:
            if weights is not None or factory_args is not None:
                raise ValueError(f"--{role}-{'weights' if weights is not None else 'args'} needs --{role}")
            continue
        models[role] = sources.load_model(spec, weights, args=sources.model_args(factory_args, f"--{role}-args"),
                                          name=f"--{role}", **normalization)
    return models


def _batch_size(value: str):
    """``--batch-size``: a positive int or "auto"."""
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int or auto, got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or auto, got {value!r}")
    return size


def _local_device() -> Optional[str]:
    """cuda:LOCAL_RANK under torchrun on a GPU machine, else the model's own device."""
    import os

    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return None


def _read_config(path: Optional[str]) -> Optional[dict]:
    if path is None:
        return None
    import tomllib

    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"--config {path}: not valid TOML ({err})") from None


def _summary(report) -> str:
    from robustx.metrics.registry import direction
    from robustx.pipeline.report import averaged_over

    rows = [f"{'metric':<10} {'value':>12}  better  {'seconds':>8}"]
    for name, m in report.metrics.items():
        value = f"{m.value:12.4g}" if m.value is not None else f"{'failed' if m.failed else 'skipped':>12}"
        note = m.failed or m.skipped or averaged_over(m)
        rows.append(f"{name:<10} {value}  {direction(m.higher_is_better):<6}  {m.seconds:8.2f}"
                    + (f"  ({note.splitlines()[0]})" if note else ""))
    return "\n".join(rows)


@contextlib.contextmanager
def _failures_summarised():
    """A block where evaluate's warning about failed metrics is silenced: :func:`_failures`
    reports them in the command's words."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"evaluate: .* failed", category=RuntimeWarning)
        yield


def _failures(report, command: str) -> int:
    """1 after a one-line summary (stderr) of the metrics and figures that failed, else 0."""
    import sys

    failed = [*report.failed, *(f"{title} figures" for title in report.run.get("failed_figures", {}))]
    if not failed:
        return 0
    print(f"robustx {command}: {len(failed)} failed: {', '.join(failed)} (reasons above and in report.json)",
          file=sys.stderr)
    return 1


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole suite on the built-in digits CNN (a few minutes on a 2-core CPU)",
        description="robustx evaluate on the built-in digits CNN and its test images, with settings sized "
        "for a laptop CPU: every metric, PGD L-inf eps 0.1, the PGD-trained digits CNN as the defended model, "
        "an independently trained one as the surrogate (AA_B) and the mCE baseline, coverage profiled on the "
        "training split.",
    )
    p.add_argument("--n", type=int, default=128, help="test images (default %(default)s; a number larger than the "
                   "test set: all of it)")
    _add_output(p, "out/demo", _run_demo)


DEMO_CONFIG = {
    "pgd": {"eps": 0.1, "step_size": 0.025},
    "clever": {"n_batches": 50, "n_samples": 64, "n_images": 16, "radius": 2.0},
    "div": {"eps": 0.1},
    "eps-eni_noise": {"eps": 0.1},
}


def _run_demo(args: argparse.Namespace) -> int:
    from robustx import checks
    from robustx.data import digits
    from robustx.models import digits_cnn
    from robustx.pipeline.evaluate import evaluate

    x, y = digits("test")
    n = min(checks.integer(args.n, "--n"), x.shape[0])
    independent = digits_cnn(variant="seed1")
    with _failures_summarised():
        report = evaluate(digits_cnn(), (x[:n], y[:n]), config=DEMO_CONFIG, defended=digits_cnn(variant="pgd"),
                          surrogate=independent, baseline=independent, profile=digits("train")[0], out=args.out,
                          progress=not args.no_progress, name="digits CNN (built-in)")
    print(_summary(report))
    print(f"report: {args.out}/report.html (and report.json, report.csv, store.sqlite)")
    return _failures(report, "demo")


def _add_compare(subparsers) -> None:
    p = subparsers.add_parser("compare", help="side-by-side table of several reports",
                              description="Print every metric the reports share, side by side, the better value "
                              "of each row marked with *, then the means over the successful examples S again over "
                              "the inputs every model got right and every model's attack fooled; --html writes the "
                              "same tables with bar charts.")
    p.add_argument("reports", nargs="+", help="report folders or report.json files")
    p.add_argument("--html", default=None, help="also write a comparison page here")
    p.add_argument("--no-common", action="store_true", help="leave out the means over S on the inputs every model "
                   "got right and every model's attack fooled (needed for reports of different inputs)")
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from robustx.pipeline.report import Report, compare, compare_html

    if len(args.reports) < 2:
        raise ValueError("compare needs at least two reports")
    reports = [Report.load(path) for path in args.reports]
    names = [str(path).rstrip("/").removesuffix("/report.json") for path in args.reports]
    print(compare(reports, names, common=not args.no_common))
    if args.html:
        Path(args.html).write_text(compare_html(reports, names, common=not args.no_common))
        print(f"wrote {args.html}")
    return 0


def _add_metrics(subparsers) -> None:
    p = subparsers.add_parser("metrics", help="list every metric: family, direction, needs",
                              description="Every metric of the suite with its family, direction and what it needs.")
    p.set_defaults(run=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    from robustx.metrics import available, get

    print(f"{'metric':<9} {'family':<17} {'better':<7} needs")
    for name in available():
        info = get(name)
        needs = ", ".join(sorted(info.needs)) or "-"
        print(f"{name:<9} {info.family:<17} {info.direction:<7} {needs}")
    return 0


def _add_clever(subparsers) -> None:
    from robustx.clever_table import CLEVER_TABLE_DEFAULTS as d

    p = subparsers.add_parser(
        "clever",
        help="CLEVER L2 and L-inf scores of the built-in digits CNN",
        description="Untargeted CLEVER (L2 and L-inf) on test images of the built-in digits CNN: a "
        "console table, clever.json and clever_hist.png. The paper uses 500 batches of 1024 samples.",
    )
    p.add_argument("--n-images", type=int, default=d["n_images"], help="number of test images (default %(default)s)")
    p.add_argument("--n-batches", type=int, default=d["n_batches"], help="N_b batches per image (default %(default)s)")
    p.add_argument("--n-samples", type=int, default=d["n_samples"], help="N_s samples per batch (default %(default)s)")
    p.add_argument("--radius-l2", type=float, default=d["radius_l2"], help="L2 sampling radius (default %(default)s)")
    p.add_argument("--radius-linf", type=float, default=d["radius_linf"], help="L-inf radius (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="sampling seed (default %(default)s)")
    _add_output(p, "out/clever", _run_clever)


def _run_clever(args: argparse.Namespace) -> int:
    from robustx.clever_table import run_clever_table

    run_clever_table(args.out, n_images=args.n_images, n_batches=args.n_batches, n_samples=args.n_samples,
             radius_l2=args.radius_l2, radius_linf=args.radius_linf, seed=args.seed, progress=not args.no_progress)
    return 0


def _add_landscape(subparsers) -> None:
    from robustx.landscape import SURFACES

    p = subparsers.add_parser(
        "landscape",
        help="plot input-space loss landscapes / decision surfaces",
        description="Write contour, 3-D surface and 1-D slice PNGs of the loss or decision surface "
        "around chosen test images (Yu et al., IJCAI 2019). Default model: the built-in digits CNN.",
    )
    p.add_argument("--model", choices=("digits", "resnet20"), default="digits",
                   help="architecture: built-in digits CNN on sklearn digits, or CIFAR ResNet-20 "
                   "on the AISafety CIFAR-10 images (default: digits)")
    p.add_argument("--weights", default=None, help="state-dict path for the architecture "
                   "(default: the shipped digits weights; required for resnet20)")
    p.add_argument("--data-root", default=None, help="AISafety CIFAR-10 folder (resnet20 only)")
    p.add_argument("--images", type=int, nargs="+", default=[0], help="test-set indices (default: 0)")
    p.add_argument("--span", type=float, default=None,
                   help="grid half-width (default: 0.5 for digits, 16/255 for resnet20)")
    p.add_argument("--steps", type=int, default=41, help="grid points per axis (default: %(default)s)")
    p.add_argument("--surface", choices=SURFACES, default="loss", help="default: %(default)s")
    p.add_argument("--norm", choices=("inf", "2"), default="inf", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seed of the random direction (default: %(default)s)")
    _add_output(p, "landscapes", _run_landscape)


def _run_landscape(args: argparse.Namespace) -> int:
    from robustx.landscape import run_landscape

    paths = run_landscape(args.out, model=args.model, weights=args.weights, data_root=args.data_root,
                          images=args.images, span=args.span, steps=args.steps, surface=args.surface,
                          norm=args.norm, seed=args.seed, progress=not args.no_progress)
    print("\n".join(str(path) for path in paths))
    return 0


SUBCOMMANDS = [_add_demo, _add_evaluate, _add_compare, _add_metrics, _add_clever, _add_landscape]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustx", description="Fast, paper-faithful robustness evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


#: The errors main() prints as one line: what the library raises for a bad argument, a bad or
#: missing file, a failed import, an unavailable device or a failed user factory
#: (:class:`robustx.pipeline.sources.UserCodeError` is a RuntimeError). Anything else
#: (AttributeError, AssertionError, IndexError, ...) is a bug in robustx and keeps its
#: traceback, to be reported; KeyboardInterrupt and SystemExit pass through.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError, RuntimeError)


def _importable_working_directory() -> None:
    """Put the working directory first on ``sys.path`` when it is not there, as ``python -m``
    does, so ``--model mymodels:factory`` finds ``./mymodels.py`` under the installed
    ``robustx`` command too (whose ``sys.path`` starts with its own bin folder)."""
    import os
    import sys

    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``robustx`` console script and ``python -m robustx``.

    An error of :data:`USER_ERRORS` prints one line, ``robustx COMMAND: error: MESSAGE``
    (a multi-line message joined), and exits with 2; ``--debug`` shows the traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _importable_working_directory()
    try:
        return args.run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        parser.exit(2, f"robustx {args.command}: error: {' '.join(str(message).split())}\n")
