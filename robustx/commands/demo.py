"""``robustx demo``: ``robustx evaluate`` on the built-in digits CNN, sized for a laptop CPU."""
from __future__ import annotations

import argparse

from robustx.commands.common import add_output, failures, failures_summarised, summary

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "DEMO_CONFIG"]

#: the demo's config tables besides the suite's defaults (CLEVER: robustx.clever.CLEVER_DEFAULTS)
DEMO_CONFIG = {
    "pgd": {"eps": 0.1, "step_size": 0.025},
    "div": {"eps": 0.1},
    "eps-eni_noise": {"eps": 0.1},
}


#: the one-line help of ``robustx --help`` and the description of ``robustx demo --help``
HELP = "the whole suite on the built-in digits CNN (a few minutes on a 2-core CPU)"
DESCRIPTION = ("robustx evaluate on the built-in digits CNN and its test images, with settings sized "
               "for a laptop CPU: every metric, PGD L-inf eps 0.1, the PGD-trained digits CNN as the "
               "defended model, an independently trained one as the surrogate (AA_B) and the mCE "
               "baseline, coverage profiled on the training split.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("--n", type=int, default=128,
                        help="test images (default %(default)s; a number larger than the test set: all of it)")
    add_output(parser, "out/demo", run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the digits CNN on its first --n test images; 1 when a metric or figure failed, else 0."""
    from robustx import checks
    from robustx.pipeline import sources
    from robustx.pipeline.evaluate import evaluate

    n = checks.integer(args.n, "--n")
    model = sources.load_model("digits")
    x, y = sources.load_data("digits", model)
    n = min(n, x.shape[0])
    independent = sources.load_model("digits-seed1")
    with failures_summarised():
        report = evaluate(model, (x[:n], y[:n]), config=DEMO_CONFIG, defended=sources.load_model("digits-pgd"),
                          surrogate=independent, baseline=independent, profile=sources.load_profile("digits"),
                          out=args.out, progress=not args.no_progress, name="digits CNN (built-in)")
    print(summary(report))
    print(f"report: {args.out}/report.html (and report.json, report.csv, store.sqlite)")
    return failures(report, "demo")
