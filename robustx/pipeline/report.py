"""The report of an evaluation run: JSON with stable keys, one self-contained HTML page,
the plots it embeds, and side-by-side comparison of reports.

``report.json`` is strict JSON: non-finite floats are written as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` and read back as floats by :meth:`Report.load`
(:mod:`robustx.jsonio`, the convention of every file robustx writes).
Figures (PNG bytes) live in the HTML page only.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from robustx import jsonio
from robustx.plotting import bars_png, fmt as _fmt

__all__ = ["MetricResult", "Report", "compare", "compare_html", "common_set", "averaged_over", "per_input_csv"]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
REPORT_CSV = "report.csv"


# ---------------------------------------------------------------------------------------
# Results


@dataclass
class MetricResult:
    """One metric's result. ``value`` is None exactly when the metric was ``skipped`` (an
    input it needs was not given; ``skipped`` says which) or ``failed`` (it raised;
    ``failed`` is "ExceptionType: message"); ``per_sample`` holds per-input values where
    they exist; ``higher_is_better`` None: not ranked (test adequacy, e.g. coverage);
    ``budget``: the settings it ran with, resolved (its config table over the preset over
    the defaults, and the attacks' when it uses adversarial examples)."""

    name: str
    value: Optional[float]
    higher_is_better: Optional[bool]
    per_sample: Optional[List[float]] = None
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    skipped: Optional[str] = None
    family: Optional[str] = None
    failed: Optional[str] = None
    budget: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.skipped is not None and self.failed is not None:
            raise ValueError(f"metric {self.name!r} cannot be both skipped and failed")
        if (self.value is None) != (self.skipped is not None or self.failed is not None):
            raise ValueError(f"metric {self.name!r}: value must be None exactly when skipped or failed gives a "
                             f"reason, got value={self.value!r}, skipped={self.skipped!r}, failed={self.failed!r}")
        if self.value is not None:
            self.value = float(self.value)
        if self.per_sample is not None:
            self.per_sample = [float(v) for v in self.per_sample]

    def to_dict(self) -> dict:
        """The JSON object of this result (every field, always the same keys)."""
        return asdict(self)


@dataclass
class Report:
    """An evaluation's metrics, run description (id, model, data, seed, timings,
    versions), figures (title -> PNG bytes; in the HTML page, not in the JSON) and
    per-input columns (``inputs``: "label", "prediction", "fooled_by", one value per input)."""

    metrics: Dict[str, MetricResult]
    run: dict = field(default_factory=dict)
    figures: Dict[str, bytes] = field(default_factory=dict)
    inputs: Dict[str, list] = field(default_factory=dict)

    @property
    def failed(self) -> Dict[str, str]:
        """{name: reason} of the metrics that failed (in report order)."""
        return {k: m.failed for k, m in self.metrics.items() if m.failed is not None}

    def to_dict(self) -> dict:
        """``{"metrics": {name: MetricResult.to_dict()}, "run": run, "inputs": inputs}``."""
        return {"metrics": {k: m.to_dict() for k, m in self.metrics.items()}, "run": self.run,
                "inputs": self.inputs}

    def to_json(self) -> str:
        """:meth:`to_dict` as strict JSON text (see the module docstring for NaN/inf)."""
        return jsonio.dumps(self.to_dict(), indent=2)

    def to_html(self) -> str:
        """The self-contained HTML page of this report."""
        title = "Robustness report" + (f" — {self.run['model']}" if self.run.get("model") else "")
        return _page(title, _run_table(self.run) + _summary_table(self.metrics)
                     + _figures(self.figures))

    def _repr_html_(self) -> str:
        """The report in a notebook: the run and the metric table (figures in :meth:`to_html`)."""
        return _run_table(self.run) + _summary_table(self.metrics)

    def save(self, folder) -> Path:
        """Write ``report.json``, ``report.html`` and ``report.csv`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / REPORT_JSON, self.to_json())
        _write_atomic(folder / REPORT_HTML, self.to_html())
        _write_atomic(folder / REPORT_CSV, per_input_csv(self))
        return folder

    @classmethod
    def load(cls, path) -> "Report":
        """The report saved in ``path`` (a folder holding ``report.json``, or the file)."""
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_JSON
        data = jsonio.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise ValueError(f"{path} is not a robustx report (no 'metrics' object)")
        metrics = {k: MetricResult(**v) for k, v in data["metrics"].items()}
        return cls(metrics=metrics, run=data.get("run", {}), inputs=data.get("inputs", {}))


def averaged_over(m: MetricResult) -> str:
    """What a mean over an attack's successful examples S averages over, "<attack>, |S| = n"
    (empty for every other metric and for a skipped or failed one)."""
    if m.value is None or "successful" not in m.settings:
        return ""
    attack = m.settings.get("attack")
    return f"{attack}, |S| = {m.settings['successful']}" if attack else f"|S| = {m.settings['successful']}"


def per_input_csv(report: Report) -> str:
    """``report.csv``: one row per input - index, the ``inputs`` columns (label, clean
    prediction, the attacks that fooled it), then every metric's per-sample value (empty
    where a metric has none for that input, e.g. CLEVER on the inputs it did not score)."""
    n = max([len(v) for v in report.inputs.values()] + [len(m.per_sample or []) for m in report.metrics.values()]
            + [0])
    columns = {**report.inputs, **{name: m.per_sample for name, m in report.metrics.items() if m.per_sample}}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", *columns])
    for i in range(n):
        writer.writerow([i, *(_csv_cell(values[i]) if i < len(values) else "" for values in columns.values())])
    return out.getvalue()


def _csv_cell(value):
    return "" if isinstance(value, float) and math.isnan(value) else value


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file and rename it over ``path``; on failure the
    temporary file is removed and the OSError names ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
        raise


# ---------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; background: #fff; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: #e3f4e1; font-weight: bold; }
tr.skipped td { color: #888; }
tr.failed td { color: #9b1c1c; background: #fdecea; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 0.6em; max-width: 100%; box-sizing: border-box; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-weight: 600; margin-bottom: 0.4em; }
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(m: MetricResult, missing: str = "—") -> str:
    """A metric's value as shown in a table: "failed", ``missing`` when skipped, else the number."""
    return "failed" if m.failed is not None else missing if m.value is None else _fmt(m.value)


def _arrow(higher_is_better: Optional[bool]) -> str:
    return {True: "↑", False: "↓", None: "n/a"}[higher_is_better]


def _direction_title(higher_is_better: Optional[bool]) -> str:
    return {True: "higher is better", False: "lower is better", None: "test adequacy: not ranked"}[higher_is_better]


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_esc(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n<h1>{_esc(title)}</h1>\n{body}</main>\n</body>\n</html>\n")


def _table(headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{''.join(rows)}</tbody>\n</table>\n"


def _run_table(run: dict) -> str:
    if not run:
        return ""
    rows = []
    for key, value in run.items():
        shown = value if isinstance(value, str) else jsonio.dumps(value)
        rows.append(f"<tr><th>{_esc(key)}</th><td>{_esc(shown)}</td></tr>\n")
    return f'<section id="run">\n<h2>Run</h2>\n<table>\n<tbody>\n{"".join(rows)}</tbody>\n</table>\n</section>\n'


def _summary_table(metrics: Dict[str, MetricResult]) -> str:
    rows = []
    for m in metrics.values():
        cls = ' class="failed"' if m.failed is not None else ' class="skipped"' if m.skipped else ""
        note = f"failed: {m.failed}" if m.failed is not None else m.skipped or ""
        rows.append(
            f"<tr{cls}><td>{_esc(m.name)}</td><td class=\"num\">{_esc(_cell(m))}</td>"
            f"<td title=\"{_direction_title(m.higher_is_better)}\">{_arrow(m.higher_is_better)}</td>"
            f"<td>{_esc(m.family or '')}</td><td>{_esc(averaged_over(m))}</td>"
            f"<td class=\"num\">{m.seconds:.2f} s</td><td>{_esc(_budget_text(m.budget))}</td>"
            f"<td>{_esc(note)}</td></tr>\n")
    table = _table(["metric", "value", "better", "family", "averaged over", "time", "budget",
                    "skipped or failed because"], rows)
    return f'<section id="metrics">\n<h2>Metrics</h2>\n{table}</section>\n'


def _budget_text(budget) -> str:
    """A budget as one line: ``key=value, ...``, a nested table as ``name(key=value, ...)``."""
    if isinstance(budget, dict):
        return ", ".join(f"{k}({_budget_text(v)})" if isinstance(v, dict) else f"{k}={_budget_text(v)}"
                         for k, v in budget.items())
    if isinstance(budget, list):
        return "[" + ", ".join(_budget_text(v) for v in budget) + "]"
    return _fmt(budget) if isinstance(budget, float) else str(budget)


def _img(title: str, png: bytes, caption: bool = True) -> str:
    """A <figure> with the PNG embedded as a data URI, titled by a caption (or alt text only)."""
    if not isinstance(png, (bytes, bytearray)) or not png.startswith(b"\x89PNG"):
        raise ValueError(f"figure {title!r} must be PNG bytes")
    data = base64.b64encode(png).decode("ascii")
    head = f"<figcaption>{_esc(title)}</figcaption>\n" if caption else ""
    return f'<figure>\n{head}<img src="data:image/png;base64,{data}" alt="{_esc(title)}">\n</figure>\n'


def _figures(figures: Dict[str, bytes], heading: str = "Figures", caption: bool = True) -> str:
    if not figures:
        return ""
    parts = "".join(_img(t, png, caption) for t, png in figures.items())
    return f'<section id="figures">\n<h2>{_esc(heading)}</h2>\n<div class="figs">\n{parts}</div>\n</section>\n'


# ---------------------------------------------------------------------------------------
# Comparison


def _shared(reports: Sequence[Report], names: Sequence[str]) -> List[str]:
    """Metric names present in every report (first report's order); checks the arguments."""
    if not isinstance(reports, (list, tuple)) or not all(isinstance(r, Report) for r in reports):
        raise TypeError("reports must be a list of Report")
    if len(reports) < 2:
        raise ValueError(f"compare needs at least 2 reports, got {len(reports)}")
    if not isinstance(names, (list, tuple)) or len(names) != len(reports):
        raise ValueError(f"names must be a list with one name per report ({len(reports)}), got {names!r}")
    shared = [k for k in reports[0].metrics if all(k in r.metrics for r in reports[1:])]
    for k in shared:
        if len({r.metrics[k].higher_is_better for r in reports}) > 1:
            raise ValueError(f"metric {k!r} has a different direction (higher_is_better) in different reports")
    return shared


def _best(values: Sequence[Optional[float]], higher_is_better: Optional[bool]) -> Optional[int]:
    """Index of the single best value (None values and NaN do not compete); None on a tie,
    when fewer than two values compete, or for a metric without a direction (not ranked)."""
    if higher_is_better is None:
        return None
    scored = [(v if higher_is_better else -v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if len(scored) < 2:
        return None
    top = max(s for s, _ in scored)
    winners = [i for s, i in scored if s == top]
    return winners[0] if len(winners) == 1 else None


def _rows(reports: Sequence[Report], shared: Sequence[str]):
    """(metric, direction arrow, results, index of the best or None) for each shared metric."""
    for k in shared:
        hib = reports[0].metrics[k].higher_is_better
        results = [r.metrics[k] for r in reports]
        yield k, _arrow(hib), results, _best([m.value for m in results], hib)


def _shown(m: MetricResult, star: bool) -> str:
    """A compared value: the number (``*`` when best), "failed" or "skipped", and the |S| it
    averages over where it is a mean over an attack's successful examples."""
    count = f" (|S|={m.settings['successful']})" if averaged_over(m) else ""
    return _cell(m, "skipped") + ("*" if star else "") + count


def _over_s(reports: Sequence[Report], shared: Sequence[str]) -> List[str]:
    """The shared metrics that every report gives as a mean over S with per-input terms."""
    return [k for k in shared if all(averaged_over(r.metrics[k]) and r.metrics[k].per_sample is not None
                                     for r in reports)]


def _same_inputs(reports: Sequence[Report], names: Sequence[str]) -> None:
    """ValueError unless every report was made on the same inputs (data digest and count)."""
    seen = [(r.run.get("data"), r.run.get("inputs")) for r in reports]
    for name, (digest, n) in zip(names, seen):
        if digest is None or n is None:
            raise ValueError(f"compare: report {name!r} does not record its inputs' digest and count, so the "
                             "inputs every model got right cannot be matched; compare without the common set "
                             "(common=False, --no-common)")
    if len(set(seen)) > 1:
        described = ", ".join(f"{name}: {n} inputs, data {digest[:12]}" for name, (digest, n) in zip(names, seen))
        raise ValueError(f"compare: the reports were made on different inputs ({described}); the common set of "
                         "inputs is defined only over the same inputs; compare without it (common=False, --no-common)")


def common_set(reports: List[Report], names: List[str]) -> Dict[str, Tuple[int, List[float]]]:
    """For every shared mean over an attack's successful examples S (ALD_p, ASS, PSD, ACAC,
    ACTC, NTE over the minimal attack; RGB, RIC over the primary one): metric -> (|common|,
    one value per report), each report's mean of its per-input terms over the common set,
    the inputs every compared model got right and every model's attack fooled (the inputs
    where every report has a term). NaN where that set is empty. ValueError when the
    reports were made on different inputs (data digest or number of inputs)."""
    over = _over_s(reports, _shared(reports, names))
    if over:
        _same_inputs(reports, names)
    out = {}
    for k in over:
        columns = [r.metrics[k].per_sample for r in reports]
        common = [i for i in range(len(columns[0])) if all(not math.isnan(c[i]) for c in columns)]
        out[k] = (len(common), [sum(c[i] for i in common) / len(common) if common else math.nan for c in columns])
    return out


def _common_rows(reports: Sequence[Report], names: Sequence[str]):
    """(metric, arrow, attacks, |common|, values, index of the best or None) per common-set metric."""
    for k, (n, values) in common_set(list(reports), list(names)).items():
        hib = reports[0].metrics[k].higher_is_better
        attacks = "/".join(dict.fromkeys(str(r.metrics[k].settings.get("attack")) for r in reports))
        yield k, _arrow(hib), attacks, n, values, _best(values, hib)


_COMMON = ("over the common set: the inputs every compared model got right and every model's attack fooled "
           "(the same inputs for every model)")


def _text_table(table: List[List[str]], left: int) -> List[str]:
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if c < left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def compare(reports: List[Report], names: List[str], common: bool = True) -> str:
    """A side-by-side text table of every metric the reports share; ``*`` marks the single
    better value of each row (by its direction; ties, skipped and failed values get no mark);
    a mean over an attack's successful examples S shows its |S|. With ``common`` (default),
    the means over S again over the common set (:func:`common_set`), with its size."""
    shared = _shared(reports, names)
    table = [["metric", "dir", *map(str, names)]]
    for k, arrow, results, best in _rows(reports, shared):
        table.append([k, arrow, *(_shown(m, i == best) for i, m in enumerate(results))])
    lines = _text_table(table, 2)
    lines.append("* better value (↑ higher is better, ↓ lower is better; n/a: test adequacy, not ranked)")
    only = sorted({k for r in reports for k in r.metrics} - set(shared))
    if only:
        lines.append("not in every report: " + ", ".join(only))
    rows = list(_common_rows(reports, names)) if common else []
    if rows:
        table = [["metric", "dir", "attack", "inputs", *map(str, names)]]
        for k, arrow, attacks, n, values, best in rows:
            shown = [_fmt(v) + ("*" if i == best else "") for i, v in enumerate(values)]
            table.append([k, arrow, attacks, str(n), *shown])
        lines += ["", _COMMON + ":", *_text_table(table, 3)]
    return "\n".join(lines) + "\n"


def compare_html(reports: List[Report], names: List[str], common: bool = True) -> str:
    """A self-contained HTML page: the comparison table (better value highlighted), with
    ``common`` the means over S over the common set (:func:`common_set`), and a bar chart
    per shared metric."""
    shared = _shared(reports, names)
    rows, charts = [], {}
    for k, arrow, results, best in _rows(reports, shared):
        cells = "".join(f'<td class="num{" best" if i == best else ""}">{_esc(_shown(m, False))}</td>'
                        for i, m in enumerate(results))
        rows.append(f"<tr><td>{_esc(k)}</td><td>{arrow}</td>{cells}</tr>\n")
        kept = [(str(n), m.value) for n, m in zip(names, results) if m.value is not None]
        if kept:
            title = f"{k} (not ranked)" if arrow == "n/a" else f"{k} ({arrow} better)"
            charts[title] = bars_png([n for n, _ in kept], [v for _, v in kept], title)
    table = _table(["metric", "better", *map(str, names)], rows)
    body = f'<section id="metrics">\n<h2>Metrics</h2>\n{table}</section>\n'
    common_rows = []
    for k, arrow, attacks, n, values, best in (_common_rows(reports, names) if common else []):
        cells = "".join(f'<td class="num{" best" if i == best else ""}">{_esc(_fmt(v))}</td>'
                        for i, v in enumerate(values))
        common_rows.append(f"<tr><td>{_esc(k)}</td><td>{arrow}</td><td>{_esc(attacks)}</td>"
                           f'<td class="num">{n}</td>{cells}</tr>\n')
    if common_rows:
        table = _table(["metric", "better", "attack", "inputs", *map(str, names)], common_rows)
        body += f'<section id="common">\n<h2>Common set</h2>\n<p>{_esc(_COMMON)}.</p>\n{table}</section>\n'
    return _page("Robustness comparison", body + _figures(charts, "Per metric", caption=False))
