"""What several commands share: the output options, the model and data options of the
commands that take one model, and the summary of an evaluate report."""
from __future__ import annotations

import argparse
import contextlib
import re
from typing import Callable, Sequence, Tuple

import torch

__all__ = ["add_output", "add_model_and_data", "model_and_data_arguments", "load_model_and_data", "n_inputs", "inputs",
           "file_stem", "floats", "summary", "failures_summarised", "failures"]


def add_output(parser: argparse.ArgumentParser, out: str, run: Callable[[argparse.Namespace], int]) -> None:
    """The options every command that writes files has (--out, --no-progress) and its runner."""
    parser.add_argument("--out", default=out, help="output folder (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


def add_model_and_data(parser: argparse.ArgumentParser) -> None:
    """--model, --model-args, --weights and --data, named as ``robustx evaluate`` names them."""
    parser.add_argument("--model", default="digits",
                        help="digits (also digits-seed1, digits-pgd), resnet20, module:factory or a TorchScript / .pt2"
                             " file, as robustx evaluate (default %(default)s)")
    parser.add_argument("--model-args", default=None, help="keyword arguments of a module:factory, a JSON object")
    parser.add_argument("--weights", default=None, help="checkpoint for the model (default: its shipped weights)")
    parser.add_argument("--data", default=None,
                        help="digits, cifar100, an image folder or a .npz file (x, y) (default: a built-in model's own"
                             " test set)")


def model_and_data_arguments(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`load_model_and_data` given by :func:`add_model_and_data`'s options."""
    from robustx.pipeline.sources import model_args

    return {"model": args.model, "weights": args.weights, "model_args": model_args(args.model_args),
            "data": args.data}


def load_model_and_data(model: str = "digits", weights=None, model_args=None, data=None):
    """(model, data name, data) named as :func:`add_model_and_data`'s options name them,
    through :mod:`robustx.pipeline.sources` (the one loader of named models and data): the
    data is (x, y) tensors or an image folder's Dataset (see :func:`inputs`)."""
    from robustx.pipeline import sources

    net = sources.load_model(model, weights, args=model_args)
    data = data or sources.default_data(model)
    return net, data, sources.load_data(data, net)


def n_inputs(loaded) -> int:
    """How many inputs data loaded by :func:`load_model_and_data` holds."""
    return loaded[0].shape[0] if isinstance(loaded, tuple) else len(loaded)


def inputs(loaded, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) tensors of the inputs ``indices`` of data loaded by :func:`load_model_and_data`."""
    if isinstance(loaded, tuple):
        idx = torch.tensor(list(indices), dtype=torch.int64)
        return loaded[0][idx], loaded[1][idx]
    items = [loaded[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def file_stem(spec: str) -> str:
    """A model or data name as a file-name part: its last path component, every run of
    characters other than letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return re.sub(r"[^\w-]+", "_", spec.rstrip("/").rsplit("/", 1)[-1])


def floats(value: str):
    """Comma-separated numbers, e.g. ``0,1`` or ``0.485,0.456,0.406``."""
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {value!r}") from None


def summary(report) -> str:
    """One line per metric of an evaluate report: value, direction, seconds (and why it has no value)."""
    from robustx.metrics.registry import direction
    from robustx.pipeline.report import averaged_over

    width = max([10, *map(len, report.metrics)])
    rows = [f"{'metric':<{width}} {'value':>12}  better  {'seconds':>8}"]
    for name, m in report.metrics.items():
        value = f"{m.value:12.4g}" if m.value is not None else f"{'failed' if m.failed else 'skipped':>12}"
        note = m.failed or m.skipped or averaged_over(m)
        rows.append(f"{name:<{width}} {value}  {direction(m.higher_is_better):<6}  {m.seconds:8.2f}"
                    + (f"  ({note.splitlines()[0]})" if note else ""))
    return "\n".join(rows)


@contextlib.contextmanager
def failures_summarised():
    """A block where evaluate's warning about failed metrics is silenced: :func:`failures`
    reports them in the command's words."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"evaluate: .* failed", category=RuntimeWarning)
        yield


def failures(report, command: str) -> int:
    """1 after a one-line summary (stderr) of the metrics and figures that failed, else 0."""
    import sys

    failed = [*report.failed, *(f"{title} figures" for title in report.run.get("failed_figures", {}))]
    if not failed:
        return 0
    print(f"robustx {command}: {len(failed)} failed: {', '.join(failed)} (reasons above and in report.json)",
          file=sys.stderr)
    return 1
