"""``robustx evaluate``: the whole evaluation suite on one model (report.json, report.html,
report.csv, store.sqlite), models and data named as :mod:`robustx.pipeline.sources` names them."""
from __future__ import annotations

import argparse
from typing import Optional

from robustx.commands.common import add_output, failures, failures_summarised, floats, summary

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "ROLES"]


#: the one-line help of ``robustx --help`` and the description of ``robustx evaluate --help``
HELP = "the whole evaluation suite on one model: report.json, report.html, store.sqlite"
DESCRIPTION = ("Evaluate a model with every metric of the suite (or --metrics) and write "
               "DIR/report.json, DIR/report.html and DIR/store.sqlite; --resume continues a killed "
               "run.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    _add_run_options(parser, "out/evaluate")
    parser.add_argument("--model", required=True,
                        help="digits (also digits-seed1, digits-pgd), resnet20, module:factory (e.g. "
                             "torchvision.models:resnet50, timm:create_model; a module in the working directory "
                             "works), or the path of a TorchScript file or a .pt2 exported program")
    parser.add_argument("--model-args", default=None,
                        help="keyword arguments of a module:factory as a JSON object, e.g. "
                             "'{\"model_name\": \"resnet18\", \"num_classes\": 10}'")
    parser.add_argument("--weights", default=None,
                        help="checkpoint for the model: a state dict (also nested under state_dict / model / "
                             "model_state_dict / ema, keys prefixed module. or _orig_mod.) or .safetensors (default: "
                             "its shipped weights)")
    for role, metrics in ROLES.items():
        parser.add_argument(f"--{role}", default=None, help=f"the {role} model ({metrics}), given like --model")
        parser.add_argument(f"--{role}-weights", default=None, help=f"checkpoint for --{role}, as --weights")
        parser.add_argument(f"--{role}-args", default=None,
                            help=f"keyword arguments of a --{role} factory, as --model-args")
    parser.add_argument("--normalize", choices=("imagenet",), default=None,
                        help="wrap the models so they see inputs normalised with the ImageNet mean and std (the data "
                             "itself stays in --clip-values)")
    parser.add_argument("--mean", type=floats, default=None,
                        help="per-channel mean the models' inputs are normalised with, e.g. 0.4914,0.4822,0.4465 (with"
                             " --std)")
    parser.add_argument("--std", type=floats, default=None, help="per-channel standard deviation (with --mean)")
    parser.add_argument("--clip-values", type=floats, default=(0.0, 1.0), metavar="LO,HI",
                        help="the data domain: inputs lie in [LO, HI], attacks stay in it (default 0,1)")
    parser.add_argument("--data", default=None,
                        help="digits, cifar100, an ImageNet-style folder (one subfolder per class, .jpg/.jpeg/.png) or"
                             " a .npz (x, y) / .npy (x) file (default: a built-in model's own test set)")
    parser.add_argument("--labels", choices=("predicted",), default=None,
                        help="predicted: a .npy file's labels are the model's own predictions (CA is then 1)")
    parser.add_argument("--profile", default=None,
                        help="inputs whose neuron ranges KMNC / NBC / SNAC use (e.g. training data), given like --data"
                             " (default: the digits training split for --data digits, else none)")
    parser.add_argument("-n", "--n", type=int, default=None,
                        help="evaluate the first N inputs (a folder: N spread evenly over it; default: all; under "
                             "torchrun write -n N: torchrun takes --n for its own options)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes decoding a folder's images ahead of the batch being evaluated (default "
                             "%(default)s)")
    parser.add_argument("--save-adversarial", choices=("float32", "float16"), default=None,
                        help="keep every attack's examples in the store (4 or 2 bytes per input element) so a later "
                             "--resume adding a metric reuses them; default: the store keeps only the metrics' small "
                             "per-batch states")
    parser.add_argument("--resize", type=int, default=256,
                        help="a folder's images: shorter side resized to this (default %(default)s)")
    parser.add_argument("--crop", type=int, default=224,
                        help="a folder's images: center crop size (default %(default)s)")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and inputs in channels_last memory format for the forward passes that give logits "
                             "(not attacks, not CLEVER's gradients)")
    parser.add_argument("--autocast", choices=("bf16", "fp16"), default=None,
                        help="torch.autocast for the forward passes that give logits (not attacks, not CLEVER's "
                             "gradients)")


#: the models besides --model a run can take, and the metrics each one enables
ROLES = {"defended": "CAV, CRR, CSR, CCV, COS", "surrogate": "AA_B: transferred attack",
         "baseline": "mCE, rmCE normalised by it"}


def _add_run_options(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--metrics", default="all", help="comma-separated metric names (robustx metrics), or all")
    p.add_argument("--attacks", default=None, help="comma-separated attacks: fgsm, pgd, deepfool, cw, autoattack "
                   "(the field's reference, pip install pyautoattack; default: pgd)")
    p.add_argument("--minimal-attack", default="deepfool", help="the minimal-perturbation attack whose successful "
                   "examples ALD, ASS, PSD, ACAC, ACTC and NTE average over: deepfool (default), cw, or one of "
                   "--attacks; its settings: the --config table of its name")
    p.add_argument("--config", default=None, help="TOML file: one table per metric or attack, e.g. [clever]")
    p.add_argument("--preset", choices=("quick", "paper"), default=None, help="budgets of the tables --config "
                   "leaves unset: quick (CPU budgets) or paper (each metric at its paper's settings; README: Presets); "
                   "default: paper on a CUDA device, else quick")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default %(default)s)")
    p.add_argument("--device", default=None, help="torch device the model is moved to (default: the model's)")
    p.add_argument("--batch-size", type=_batch_size, default=256, help="inputs per batch and unit, or auto: the "
                   "largest power of two whose activations fit a quarter of free GPU memory or 1 GiB on a CPU "
                   "(default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    add_output(p, out, run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the model named by --model on --data; 1 when a metric or figure failed, else 0."""
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
    with failures_summarised():
        report = evaluate(model, inputs, metrics=args.metrics, attacks=args.attacks, config=_read_config(args.config),
                          preset=args.preset, minimal_attack=args.minimal_attack, profile=profile, out=args.out,
                          resume=args.resume, seed=args.seed, device=device, batch_size=batch_size, clip_values=clip,
                          progress=not args.no_progress and rank == 0,
                          name=args.model, channels_last=args.channels_last, autocast=args.autocast,
                          workers=args.workers, save_adversarial=args.save_adversarial, _resume_hint="--resume",
                          **others)
    if rank == 0:
        print(summary(report))
        print(f"wrote {args.out}/report.json, report.html, report.csv and store.sqlite")
    return failures(report, "evaluate")


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
