"""``robustx compare``: the metrics several reports share, side by side."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]


#: the one-line help of ``robustx --help`` and the description of ``robustx compare --help``
HELP = "side-by-side table of several reports"
DESCRIPTION = ("Print every metric the reports share, side by side, the better value of each row "
               "marked with *, then the means over the successful examples S again over the inputs "
               "every model got right and every model's attack fooled; --html writes the same tables "
               "with bar charts.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("reports", nargs="+", help="report folders or report.json files")
    parser.add_argument("--html", default=None, help="also write a comparison page here")
    parser.add_argument("--no-common", action="store_true",
                        help="leave out the means over S on the inputs every model got right and every model's attack "
                             "fooled (needed for reports of different inputs)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the comparison table (and write --html); 0."""
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
